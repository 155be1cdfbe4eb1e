"""``hydra/sweeper=imgcap_optuna``: Hydra finds sweepers only in the ``hydra_plugins``
namespace package, so this module declares the plugin and its settings and hands over to
:mod:`imgcap.sweep.sweeper`. Hydra imports every plugin module at each start: nothing heavy
(Optuna, torch) is imported here.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules before they are in
# sys.modules, where dataclasses cannot resolve string annotations; and OmegaConf reads these
# annotations at run time, as Optional[...].
# ruff: noqa: UP045

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig


@dataclass
class ImgcapOptunaSweeperConf:
    _target_: str = "hydra_plugins.imgcap_sweeper.imgcap_sweeper.ImgcapOptunaSweeper"
    # maximize | minimize (conf/hparams_search/optuna.yaml derives it from monitor_mode).
    direction: str = "maximize"
    # null: <experiment>-<hash of the search space and the command line>, stable across reruns.
    study_name: Optional[str] = None
    # null: <paths.log_dir>/<task_name>/studies/<study_name>.journal; or a journal file path,
    # or a database URL (sqlite:///..., postgresql://...).
    storage: Optional[str] = None
    # Finished trials (complete, pruned or failed) the study should reach, all runs together.
    n_trials: int = 20
    # Trials at once: worker processes here, or the batch size of a Hydra launcher (SLURM).
    n_jobs: int = 1
    trials_per_gpu: int = 1
    # Seconds after which no new trial starts (null: no limit).
    timeout: Optional[float] = None
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # median | percentile | successive_halving | hyperband | threshold | wilcoxon | none
    pruner: Optional[str] = "median"
    # Keyword arguments of the pruner, e.g. {n_startup_trials: 5, n_warmup_steps: 2}.
    pruner_settings: Any = field(default_factory=dict)
    # key: choice(...) | range(...) | interval(...) | tag(log, interval(...)) | a fixed value
    params: Optional[Any] = None
    # A running trial whose sweep process was silent for stale_after seconds is retried.
    heartbeat_interval: float = 30.0
    stale_after: Optional[float] = None
    # PNG (and HTML with plotly) plots of the study in <sweep dir>/plots.
    plots: bool = True


ConfigStore.instance().store(
    group="hydra/sweeper", name="imgcap_optuna", node=ImgcapOptunaSweeperConf, provider="imgcap"
)


class ImgcapOptunaSweeper(Sweeper):
    """Optuna on Hydra's composition: persistent studies, pruning, resume, parallel workers."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.hydra_context: Any = None
        self.task_function: Any = None
        self.config: Optional[DictConfig] = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config

    def sweep(self, arguments: list[str]) -> Any:
        from imgcap.sweep.sweeper import run_sweep

        return run_sweep(
            self.settings, self.hydra_context, self.task_function, self.config, arguments
        )
