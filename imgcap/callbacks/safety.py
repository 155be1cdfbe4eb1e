"""Callbacks that keep a run safe to stop and to resume: the run config and RNG state in every
checkpoint, a guard against non-finite losses and weights, and the checkpoint saved when the run
is interrupted (Ctrl-C, SIGTERM) or fails."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch

from imgcap.atomic import WriteError
from imgcap.checkpoint import CHECKPOINT_KEY, run_config_entry
from imgcap.errors import DivergenceError

log = logging.getLogger(__name__)


class RunConfigInCheckpoint(L.Callback):
    """Store the resolved run config in every checkpoint, so a checkpoint alone suffices (to
    evaluate, caption, or resume with ``ckpt_path=`` alone)."""

    def __init__(
        self,
        run_config: dict[str, Any],
        overrides: list[str] | None = None,
        choices: dict[str, Any] | None = None,
    ) -> None:
        self.run_config = run_config
        self.overrides = overrides
        self.choices = choices

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = run_config_entry(self.run_config, self.overrides, self.choices)


class RngState(L.Callback):
    """Save the torch (CPU and CUDA), NumPy and Python RNG states in every checkpoint and
    restore them on resume, so dropout and scheduled sampling continue the same streams.

    States are stored as tensors and lists (plain values: checkpoints load with weights_only).
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [
                str(kind),
                torch.from_numpy(keys.astype(np.int64)),
                int(pos),
                int(has_gauss),
                float(cached),
            ],
            "python": [int(version), list(internal), gauss],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        torch.set_rng_state(state["torch"].cpu())
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            cuda_states = state["cuda"]
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity (one host sync for all)."""
    params = [(n, p) for n, p in module.named_parameters()]
    if not params:
        return []
    flags = torch.stack([torch.isfinite(p).all() for _, p in params]).cpu().tolist()
    return [n for (n, _), ok in zip(params, flags, strict=True) if not ok]


class FiniteGuard(L.Callback):
    """Stop training at the first non-finite loss, and before any validation (hence before any
    best/last checkpoint is written) when a weight is non-finite.

    Raises :class:`~imgcap.errors.DivergenceError`: one line naming the epoch and step; nothing
    non-finite is saved (:class:`InterruptCheckpoint` skips it too).
    """

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None  # (,) first non-finite step, on the GPU

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        finite = torch.isfinite(loss.detach()).all()
        if loss.device.type != "cuda":  # reading the flag costs nothing here: every step
            if not bool(finite):
                self._diverged(trainer, float(loss.detach().float().mean()), trainer.global_step)
            return
        # On a GPU reading the flag back is a host sync that stalls the queue of kernels (and
        # the replayed CUDA graphs): remember the first bad step on the device and read it only
        # every log_every_n_steps steps and before validation. Weights are checked before any
        # checkpoint is written, so the later read loses nothing.
        step = torch.tensor(trainer.global_step, device=loss.device)
        if self._first_bad is None:
            self._first_bad = torch.full_like(step, -1)
        self._first_bad = torch.where(~finite & (self._first_bad < 0), step, self._first_bad)
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._check_first_bad(trainer)

    def _check_first_bad(self, trainer: L.Trainer) -> None:
        if self._first_bad is not None and int(self._first_bad) >= 0:
            self._diverged(trainer, float("nan"), int(self._first_bad), "non-finite")

    def _diverged(self, trainer: L.Trainer, value: float, step: int, text: str = "") -> None:
        raise DivergenceError(
            f"training diverged: the loss is {text or value} at epoch "
            f"{trainer.current_epoch}, step {step}; {_DIVERGENCE_HINT}"
        )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._check_weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_weights(trainer, pl_module)

    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_first_bad(trainer)
        bad = nonfinite_parameters(pl_module)
        if bad:
            raise DivergenceError(
                f"training diverged: {len(bad)} weight tensor(s) are non-finite (first: {bad[0]}) "
                f"after epoch {trainer.current_epoch}, step {trainer.global_step}; "
                f"{_DIVERGENCE_HINT}"
            )


_DIVERGENCE_HINT = (
    "no checkpoint was written from this state. Lower model.optimizer.lr (and "
    "model.encoder.lr) or set trainer.gradient_clip_val, then start again or resume from "
    "checkpoints/last.ckpt"
)


class InterruptCheckpoint(L.Callback):
    """Write ``<dirpath>/<filename>.ckpt`` when training stops on an exception (Ctrl-C, SIGTERM,
    a data error...), so the run can resume from where it was.

    Unlike Lightning's OnExceptionCheckpoint, its presence never makes a fresh run resume from
    an old checkpoint on its own (resuming is explicit: ``ckpt_path=``); it never saves weights
    that are non-finite; and a stop during validation saves the state from before validation
    (the loops marked to validate again on resume), since partial validation results are not
    part of a checkpoint.
    """

    def __init__(self, dirpath: str, filename: str = "on_exception") -> None:
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.saved: Path | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return  # nothing trained yet: nothing to lose
        if isinstance(exception, DivergenceError):
            return
        if nonfinite_parameters(pl_module):
            return
        self._validating_in_fit = trainer.validating and not trainer.sanity_checking
        try:
            # A full checkpoint (optimizer and loops too); saying so keeps Lightning quiet.
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        except WriteError as err:
            # The error that stopped training is the one to report; this one is a footnote.
            log.warning("warning: no checkpoint to resume from: %s", err)
            return
        finally:
            self._validating_in_fit = False
        self.saved = self.ckpt_path

    _validating_in_fit = False

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self._validating_in_fit:
            return
        # Mark validation as interrupted during its first batch: Lightning then runs it again
        # from the start on resume, with fresh metric states.
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        key = "epoch_loop.val_loop.batch_progress"
        if key in loops:
            progress = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
            loops[key] = {
                "total": dict(progress),
                "current": dict(progress),
                "is_last_batch": False,
            }
