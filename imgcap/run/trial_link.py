"""The job's side of a sweep: which Optuna trial it is, reporting to it, and being pruned.

The sweeper tells each job its study through three environment variables (set with Hydra's
``hydra.job.env_set``, so they reach the job with every launcher, SLURM included):
``IMGCAP_SWEEP_STORAGE``, ``IMGCAP_SWEEP_STUDY`` and ``IMGCAP_SWEEP_TRIAL`` (the trial number).
The pruner is read from the study itself (the sweeper records it there), so the job decides
on pruning exactly as the sweeper was told to.

The Lightning side (report after each validation, stop when pruned) is
:mod:`imgcap.run.trial_reporter`; this module imports neither torch nor Lightning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ENV_STORAGE = "IMGCAP_SWEEP_STORAGE"
ENV_STUDY = "IMGCAP_SWEEP_STUDY"
ENV_TRIAL = "IMGCAP_SWEEP_TRIAL"

# Trial user attributes written by the job (read by the sweeper and the results files).
ATTR_RUN_DIR = "run_dir"
ATTR_EPOCHS = "epochs"  # epochs the run has reached (absolute, counting a resumed start)
ATTR_EPOCHS_RUN = "epochs_run"  # epochs started by this trial's own process
ATTR_PRUNED_AT = "pruned_at_epoch"
# Study user attribute written by the sweeper: the pruner every job of the study uses.
STUDY_ATTR_PRUNER = "imgcap.pruner"


@dataclass
class TrialAddress:
    storage: str
    study: str
    number: int


def trial_address(environ: dict[str, str] | None = None) -> TrialAddress | None:
    """The trial this process runs, from the environment; None outside a sweep."""
    env = os.environ if environ is None else environ
    if not all(env.get(k) for k in (ENV_STORAGE, ENV_STUDY, ENV_TRIAL)):
        return None
    return TrialAddress(env[ENV_STORAGE], env[ENV_STUDY], int(env[ENV_TRIAL]))


class LinkedTrial:
    """An Optuna trial opened from another process (the sweeper created it)."""

    def __init__(self, address: TrialAddress) -> None:
        import optuna

        from imgcap.run.pruners import build_pruner
        from imgcap.run.study_storage import open_storage

        self.address = address
        storage = open_storage(address.storage)
        study = optuna.load_study(study_name=address.study, storage=storage)
        spec = study.user_attrs.get(STUDY_ATTR_PRUNER) or {"name": "none"}
        study.pruner = build_pruner(spec.get("name"), spec.get("settings"))
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, address.number)
        self.study = study
        self.trial = optuna.Trial(study, trial_id)

    def set(self, key: str, value: Any) -> None:
        self.trial.set_user_attr(key, value)

    def report(self, value: float, step: int) -> bool:
        """Report one intermediate value; True when the trial should stop (pruned)."""
        self.trial.report(value, step)
        return bool(self.trial.should_prune())
