"""Checkpoint files written whole or not at all, whoever saves them (Lightning's
ModelCheckpoint for best.ckpt and last.ckpt, the interrupt handler for on_exception.ckpt).

Lightning's own writer opens the target file and writes into it: a save that fails half-way
(a full disk) truncates the previous good ``best.ckpt`` in place. This one writes a temporary
file next to the target, fsyncs it and renames it over the target (:mod:`imgcap.atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from imgcap.atomic import write_with


class AtomicCheckpointIO(TorchCheckpointIO):
    """A :class:`TorchCheckpointIO` whose saves are atomic on local file systems; a failed save
    raises :class:`~imgcap.atomic.WriteError` (one line: which file, which folder, why)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):  # remote storage: fsspec's own transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_with(Path(path), lambda f: torch.save(checkpoint, f))
