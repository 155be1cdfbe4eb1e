"""The Lightning side of a sweep's trial: report after every validation, stop when pruned.

:class:`TrialReporter` reports the monitored metric after every validation (step = epoch)
and stops training cleanly when the pruner says so. Outside a sweep nothing of this runs: a
single run, its checkpoints and its exact resume are unchanged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as L

from imgcap.run.trial_link import (
    ATTR_EPOCHS,
    ATTR_EPOCHS_RUN,
    ATTR_PRUNED_AT,
    ATTR_RUN_DIR,
    LinkedTrial,
    trial_address,
)

log = logging.getLogger(__name__)


class TrialReporter(L.Callback):
    """Report ``monitor`` after each validation to the sweep's trial; stop when pruned.

    A pruned run stops at the end of the epoch it was judged on: ``pruned_at_epoch`` is set,
    training ends as if ``max_epochs`` were reached, and the task skips testing. A non-finite
    value is not reported (the divergence guard fails such a trial; it is not pruned).
    """

    def __init__(self, monitor: str, link: LinkedTrial | None = None) -> None:
        self.monitor = monitor
        self.link = link
        self.pruned_at_epoch: int | None = None
        self._epochs_run = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.link is not None and trainer.is_global_zero and stage == "fit":
            self.link.set(ATTR_RUN_DIR, str(trainer.default_root_dir))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epochs_run += 1
        if self.link is not None and trainer.is_global_zero:
            self.link.set(ATTR_EPOCHS_RUN, self._epochs_run)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.link is not None and trainer.is_global_zero:
            self.link.set(ATTR_EPOCHS, trainer.current_epoch + 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank takes the same path up to the broadcast (only rank zero holds the link).
        if trainer.sanity_checking or self.pruned_at_epoch is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        prune = False
        if trainer.is_global_zero and self.link is not None:
            prune = self.link.report(float(value), step=trainer.current_epoch)
        prune = bool(trainer.strategy.broadcast(prune))
        if prune:
            self.pruned_at_epoch = trainer.current_epoch
            if trainer.is_global_zero:
                self.link.set(ATTR_PRUNED_AT, trainer.current_epoch)
            trainer.should_stop = True


def reporter_for_this_job(monitor: str) -> TrialReporter | None:
    """The callback that links this job to its trial, or None outside a sweep."""
    address = trial_address()
    if address is None:
        return None
    from imgcap.run.cli import is_rank_zero

    return TrialReporter(monitor, LinkedTrial(address) if is_rank_zero() else None)


def trial_summary(reporter: TrialReporter) -> dict[str, Any]:
    """What a sweep's W&B run shows of its trial: study, trial number and state."""
    address = reporter.link.address if reporter.link else trial_address()
    state = "pruned" if reporter.pruned_at_epoch is not None else "complete"
    summary: dict[str, Any] = {"sweep/trial_state": state}
    if address is not None:
        summary.update({"sweep/study": address.study, "sweep/trial": address.number})
    if reporter.pruned_at_epoch is not None:
        summary["sweep/pruned_at_epoch"] = reporter.pruned_at_epoch
    return summary


def mark_pruned(output_dir: Path, loggers: list, epoch: int) -> None:
    """A pruned run says so: one line, a ``PRUNED`` file in its directory, a W&B tag."""
    from lightning.pytorch.loggers import WandbLogger

    address = trial_address()
    who = f"trial {address.number}" if address else "this run"
    print(f"{who} pruned at epoch {epoch}: it trails the other trials; not tested")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "PRUNED").write_text(f"pruned at epoch {epoch}\n")
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            try:
                run.tags = (*tuple(run.tags or ()), "pruned")
            except Exception as err:  # noqa: BLE001 - tags are a nicety; the summary has it
                log.debug("W&B tag not set: %s", err)
