"""The training progress bar: Lightning's TQDM bar, minus what confuses in a console or a file.

* no ``v_num`` (the run directory is the version);
* after a mid-epoch resume the bar says ``Epoch N`` and its total (Lightning skips the epoch-start
  hook there and would show ``Training: 20/?``);
* when stdout is not a terminal (a file, a pipe, a batch job's log) the nested validation bar is
  off: its cursor-up escapes (``ESC[A``) garble files;
* on an exception the bars are closed first, so the error starts its own line.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class ProgressBar(TQDMProgressBar):
    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False):
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self._epoch_shown: int | None = None

    @staticmethod
    def _plain_output() -> bool:
        isatty = getattr(sys.stdout, "isatty", None)
        return not (isatty and isatty())

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def init_validation_tqdm(self) -> Tqdm:
        if self._plain_output() and self.trainer.state.fn != "validate":
            return Tqdm(disable=True)  # nested under the training bar
        return super().init_validation_tqdm()

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._epoch_shown = trainer.current_epoch

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        bar = self._train_progress_bar
        if bar is None or self._epoch_shown == trainer.current_epoch:
            return
        # Resumed mid-epoch: Lightning did not call on_train_epoch_start for this epoch.
        bar.reset(total=convert_inf(self.total_train_batches))
        bar.initial = 0
        bar.n = batch_idx
        bar.set_description(f"Epoch {trainer.current_epoch}")
        self._epoch_shown = trainer.current_epoch

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        for bar in (
            self._train_progress_bar,
            self._val_progress_bar,
            self._test_progress_bar,
            self._predict_progress_bar,
        ):
            if bar is not None and not bar.disable:
                bar.close()
        sys.stdout.flush()
