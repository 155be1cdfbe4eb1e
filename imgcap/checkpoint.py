"""Checkpoints that carry their own run configuration, read without running any code.

A training checkpoint holds, besides Lightning's usual content (weights, hyperparameters with
the vocabulary), the resolved run config under ``checkpoint["imgcap"]``, so evaluation and
captioning need nothing but the file: the data settings (image size, dataset root) come from it.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: a file may only hold
tensors and plain Python values (dicts, lists, strings, numbers). Pickled objects, whose
unpickling could run arbitrary code, are refused before anything in them runs. Training writes
nothing else: partials stay out of the hyperparameters, configs are stored as plain dicts and
RNG states as tensors and lists.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from imgcap.errors import CheckpointError

# Bump when a checkpoint written by an older version can no longer be read as is, and teach
# ``upgrade_checkpoint`` the step from the previous format.
#   1: the LSTM decoder's settings at the top of the model's hyperparameters.
#   2: ``decoder: {name, ...}`` and ``objective: {name, ...}`` (the decoder/objective seams).
#   3: the package layout with ``run/``, ``callbacks/``, ``decoders/`` and ``api/``: the run
#      config's ``_target_`` import paths name the new modules.
CHECKPOINT_FORMAT = 3
CHECKPOINT_KEY = "imgcap"

# Format 1 -> 2: model hyperparameters that moved into the decoder / objective dicts.
_FORMAT1_DECODER_KEYS = {
    "attention_dim": "attention_dim",
    "embed_dim": "embed_dim",
    "decoder_dim": "decoder_dim",
    "dropout": "dropout",
    "deep_output": "deep_output",
    "decoder_unroll": "unroll",
}


def _model_settings_1_to_2(model: dict[str, Any]) -> dict[str, Any]:
    """A format-1 model config or hyperparameter dict -> format 2 (a new dict)."""
    model = dict(model)
    decoder = {"name": "lstm_attention"}
    for old, new in _FORMAT1_DECODER_KEYS.items():
        if old in model:
            decoder[new] = model.pop(old)
    model["decoder"] = decoder
    model["objective"] = {"name": "xe", "alpha_c": model.pop("alpha_c", 1.0)}
    return model


# Format 2 -> 3: import paths a run config may hold (``_target_``) that moved with the layout.
_FORMAT2_TARGETS = {
    "imgcap.module.CaptioningModule": "imgcap.captioning_module.CaptioningModule",
    "imgcap.callbacks.EncoderFineTuning": "imgcap.callbacks.schedule.EncoderFineTuning",
    "imgcap.callbacks.ValidateAfterLastEpoch": "imgcap.callbacks.schedule.ValidateAfterLastEpoch",
    "imgcap.callbacks.CaptionSampleLogger": "imgcap.callbacks.samples.CaptionSampleLogger",
    "imgcap.callbacks.FiniteGuard": "imgcap.callbacks.safety.FiniteGuard",
    "imgcap.callbacks.InterruptCheckpoint": "imgcap.callbacks.safety.InterruptCheckpoint",
    "imgcap.callbacks.RngState": "imgcap.callbacks.safety.RngState",
    "imgcap.callbacks.RunConfigInCheckpoint": "imgcap.callbacks.safety.RunConfigInCheckpoint",
    "imgcap.csv_history.HistoryCSVLogger": "imgcap.run.csv_history.HistoryCSVLogger",
}


def _moved_targets_2_to_3(node: Any) -> Any:
    """A copy of a format-2 run config with every moved ``_target_`` renamed."""
    if isinstance(node, dict):
        return {
            key: _FORMAT2_TARGETS.get(value, value)
            if key == "_target_" and isinstance(value, str)
            else _moved_targets_2_to_3(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_moved_targets_2_to_3(value) for value in node]
    return node


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint of an older format up to :data:`CHECKPOINT_FORMAT`, in memory (the
    file is never rewritten). The weights need no change: only settings moved."""
    entry = checkpoint[CHECKPOINT_KEY]
    if entry.get("format") == 1:
        checkpoint["hyper_parameters"] = _model_settings_1_to_2(checkpoint["hyper_parameters"])
        config = dict(entry.get("config") or {})
        if isinstance(config.get("model"), dict):
            config["model"] = _model_settings_1_to_2(config["model"])
        checkpoint[CHECKPOINT_KEY] = entry = {
            **entry,
            "config": config,
            "format": 2,
            "upgraded_from": 1,
        }
    if entry.get("format") == 2:
        config = _moved_targets_2_to_3(entry.get("config") or {})
        checkpoint[CHECKPOINT_KEY] = {
            **entry,
            "config": config,
            "format": 3,
            "upgraded_from": entry.get("upgraded_from", 2),
        }
    return checkpoint


def run_config_entry(
    run_config: dict[str, Any], overrides: list[str] | None = None, choices: dict | None = None
) -> dict[str, Any]:
    """What training stores under ``checkpoint["imgcap"]``: the resolved run config, and the
    command-line overrides and config-group choices it was composed from (for resuming)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": run_config,
        "overrides": list(overrides or []),
        "choices": dict(choices or {}),
    }


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else err.__class__.__name__


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``) and check it is an imgcap one.

    Returns the checkpoint dict, upgraded to the current format (:func:`upgrade_checkpoint`).
    Raises :class:`CheckpointError` with one line naming the file
    when it is missing, truncated, not a checkpoint, holds pickled objects (refused, never run),
    or comes from another program or an incompatible version.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (pass a file such as "
            "outputs/train/runs/<date>/<time>/checkpoints/best.ckpt)"
        )
    try:
        with warnings.catch_warnings():  # torch's notes on old pickle protocols: noise here
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any global it does not know (a class, a function such as
        # os.system) before calling it: nothing in the file has run.
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"`{found.group(1)}`" if found else "objects beyond tensors and plain values"
        raise CheckpointError(
            f"refusing to load {path}: it asks to unpickle {what}, which could run code; "
            "nothing in it was run. Use a checkpoint written by `python train.py`"
        ) from None
    except Exception as err:  # truncated, another format, random bytes: one line, not a traceback
        raise CheckpointError(
            f"cannot read checkpoint {path} ({err.__class__.__name__}: "
            f"{first_line(err).split('. ')[0][:160]}); "
            "the file is truncated or not a checkpoint: copy or download it again"
        ) from None
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(entry, dict) or "hyper_parameters" not in checkpoint:
        raise CheckpointError(
            f"{path} is not an imgcap training checkpoint (no '{CHECKPOINT_KEY}' entry); "
            "use a checkpoint written by `python train.py`"
        )
    if entry.get("format") not in range(1, CHECKPOINT_FORMAT + 1):
        raise CheckpointError(
            f"{path} has checkpoint format {entry.get('format')}, this imgcap reads formats 1 "
            f"to {CHECKPOINT_FORMAT}; use it with the imgcap version that trained it"
        )
    return upgrade_checkpoint(checkpoint)


def load_initial_weights(
    model: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path
) -> None:
    """Copy the checkpoint's weights into ``model`` (built with the checkpoint's vocabulary).

    A model of another shape (another decoder, other sizes) is a one-line CheckpointError
    naming the first mismatch and the checkpoint's decoder settings."""
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        detail = next(
            (line.strip() for line in str(err).splitlines()[1:] if line.strip()), first_line(err)
        )
        decoder = checkpoint["hyper_parameters"].get("decoder")
        raise CheckpointError(
            f"init_from={path} does not fit this model ({detail[:200]}); it was trained with "
            f"model.decoder={decoder}: use the same decoder settings"
        ) from None
