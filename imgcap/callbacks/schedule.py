"""Callbacks that shape the training schedule: when the encoder starts fine-tuning, and the
validation after the last epoch."""

from __future__ import annotations

import logging

import lightning.pytorch as L

log = logging.getLogger(__name__)


class EncoderFineTuning(L.Callback):
    """Unfreeze the encoder (``fine_tune``: "all" or the last k stages) from a given epoch on.

    The optimizer holds an encoder parameter group from the start; while the encoder is frozen
    its parameters get no gradient and the optimizer skips them. Because the switch depends only
    on the epoch number, a run resumed after the switch lands in the same state.
    """

    def __init__(self, unfreeze_at_epoch: int | None = None, fine_tune: str | int = "all") -> None:
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.fine_tune = fine_tune

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.unfreeze_at_epoch is not None and stage == "fit":
            pl_module.optimize_frozen_encoder = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.unfreeze_at_epoch is None or trainer.current_epoch < self.unfreeze_at_epoch:
            return
        if pl_module.encoder.is_frozen:
            pl_module.encoder.set_fine_tune(self.fine_tune)
            pl_module.encoder.train()
            log.info("epoch %d: encoder fine-tuning on (%s)", trainer.current_epoch, self.fine_tune)


class ValidateAfterLastEpoch(L.Callback):
    """Validate after the last epoch whatever ``check_val_every_n_epoch`` says.

    Otherwise ``max_epochs=2`` with validation every 10 epochs ends without a score: no best
    checkpoint, no samples, and a sweep objective of None.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        if last and trainer.check_val_every_n_epoch not in (None, 1):
            trainer.check_val_every_n_epoch = 1
