"""Checkpoints that carry their own run configuration.

A training checkpoint holds, besides Lightning's usual content (weights, hyperparameters with
the vocabulary), the resolved run config under ``checkpoint["imgcap"]``, so evaluation and
captioning need nothing but the file: the data settings (image size, dataset root) come from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgcap.errors import CheckpointError

# Bump when a checkpoint written by an older version can no longer be read as is.
CHECKPOINT_FORMAT = 1
CHECKPOINT_KEY = "imgcap"


def run_config_entry(run_config: dict[str, Any]) -> dict[str, Any]:
    """What training stores under ``checkpoint["imgcap"]``."""
    return {"format": CHECKPOINT_FORMAT, "config": run_config}


def load_captioner(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the captioning module and its run config from a checkpoint file alone.

    Returns ``(module in eval mode, run_config dict)``. Raises CheckpointError with one line
    naming the file when it is missing, unreadable or from an incompatible version.
    """
    from imgcap.module import CaptioningModule  # Lightning import kept off the models' path

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (pass ckpt=outputs/runs/<date>/<time>/checkpoints/best.ckpt)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a truncated download or a file of another kind
        raise CheckpointError(
            f"cannot read checkpoint {path}: {err.__class__.__name__}: {err}"
        ) from err
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not entry or "hyper_parameters" not in checkpoint:
        raise CheckpointError(
            f"{path} is not an imgcap training checkpoint (no '{CHECKPOINT_KEY}' entry); "
            "use a checkpoint written by `python train.py`"
        )
    if entry.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {entry.get('format')}, this imgcap reads format "
            f"{CHECKPOINT_FORMAT}; evaluate it with the imgcap version that trained it"
        )
    try:
        model = CaptioningModule(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"{path} does not match this version's model ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0]}); evaluate it with the imgcap version that trained it"
        ) from err
    model.to(map_location)
    model.eval()
    return model, entry["config"]
