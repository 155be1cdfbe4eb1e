"""A Lightning Trainer for unit-sized training in tests: CPU, silent, nothing written."""

from __future__ import annotations

import lightning.pytorch as L


def quiet_cpu_trainer(**settings) -> L.Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or model summary; ``settings``
    (max_epochs, limit_val_batches, callbacks...) are added and win."""
    quiet = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**quiet, **settings})
