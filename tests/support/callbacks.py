"""Lightning callbacks that tests add to a run by import path
(``+callbacks.<name>._target_=tests.support.callbacks.<Class>``)."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import lightning.pytorch as L


class SignalAt(L.Callback):
    """Sends this process a real signal at a given training or validation batch (first run
    only: the run config, this callback included, travels in the checkpoint)."""

    def __init__(self, stage: str, epoch: int, batch: int, signum: int = signal.SIGTERM) -> None:
        self.stage, self.epoch, self.batch, self.signum = stage, epoch, batch, int(signum)

    def _maybe(self, trainer: L.Trainer, stage: str, batch_idx: int) -> None:
        if (
            trainer.ckpt_path is None
            and not trainer.sanity_checking
            and (stage, trainer.current_epoch, batch_idx) == (self.stage, self.epoch, self.batch)
        ):
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe(trainer, "train", batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._maybe(trainer, "val", batch_idx)


def signal_at(stage: str, epoch: int, batch: int, signum: int = signal.SIGTERM) -> list[str]:
    """The overrides that add :class:`SignalAt` to a run."""
    return [
        "+callbacks.signal._target_=tests.support.callbacks.SignalAt",
        f"+callbacks.signal.stage={stage}",
        f"+callbacks.signal.epoch={epoch}",
        f"+callbacks.signal.batch={batch}",
        f"+callbacks.signal.signum={int(signum)}",
    ]


class WeightsDigest(L.Callback):
    """Writes a digest of the final weights next to metrics.json."""

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for value in pl_module.state_dict().values():
            digest.update(value.detach().cpu().numpy().tobytes())
        (Path(trainer.default_root_dir) / "weights.sha256").write_text(digest.hexdigest())
