"""Training callbacks: encoder fine-tuning schedule, sample captions/attention, run config."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from imgcap import atomic
from imgcap.atomic import WriteError
from imgcap.checkpoint import CHECKPOINT_KEY, run_config_entry
from imgcap.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from imgcap.errors import DivergenceError

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


class ValidateAfterLastEpoch(L.Callback):
    """Validate after the last epoch whatever ``check_val_every_n_epoch`` says.

    Otherwise ``max_epochs=2`` with validation every 10 epochs ends without a score: no best
    checkpoint, no samples, and a sweep objective of None.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        if last and trainer.check_val_every_n_epoch not in (None, 1):
            trainer.check_val_every_n_epoch = 1


def to_display_image(image: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation: (3, H, W) float -> (H, W, 3) uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = image.detach().cpu().float() * std + mean
    return (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


class CaptionSampleLogger(L.Callback):
    """After each validation, show a few images with predicted and reference captions.

    W&B gets a ``val/samples`` table and ``val/attention`` overlays; every run also writes
    ``samples/epoch_XXX.json`` (and the overlay PNGs) into the run directory. When training
    on cached features the batches hold no pixels: the few sample pictures are then read from
    disk (resized and cropped as for the cache), and their attention is the one computed from
    the cached features during validation.

    An objective that samples captions in training (SCST) keeps a few of the last step's in
    ``objective.logged_samples``: they go to ``samples/train_epoch_XXX.json`` and a W&B
    ``train/samples`` table at the end of each training epoch.
    """

    def __init__(self, num_samples: int = 8, num_attention: int = 2) -> None:
        self.num_samples = num_samples
        self.num_attention = num_attention
        self._samples: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = getattr(getattr(pl_module, "objective", None), "logged_samples", None)
        if not samples or not trainer.is_global_zero:
            return
        out_dir = Path(trainer.default_root_dir) / "samples"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"train_epoch_{trainer.current_epoch:03d}.json"
        atomic.write_json(path, samples, indent=1)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                keys = list(samples[0])
                rows = [
                    [str(s[k]) if isinstance(s[k], list) else s[k] for k in keys] for s in samples
                ]
                logger.log_table("train/samples", columns=keys, data=rows)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: dict[str, Any],
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        missing = self.num_samples - len(self._samples)
        if missing <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        images = batch.get("images")  # absent when training on cached features
        for i in range(min(missing, len(outputs["hypotheses"]))):
            self._samples.append(
                {
                    "image_id": batch["image_ids"][i],
                    "image": to_display_image(images[i]) if images is not None else None,
                    "prediction": outputs["hypotheses"][i],
                    "references": list(batch["references"][i]),
                    "alphas": outputs["alphas"][i].detach().cpu(),
                }
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._samples or trainer.sanity_checking or not trainer.is_global_zero:
            return
        from imgcap.visualize import attention_overlay

        for sample in self._samples:
            if sample["image"] is None:  # cached features: the picture comes from disk
                sample["image"] = self._picture_from_disk(trainer, sample["image_id"])
        epoch = trainer.current_epoch
        out_dir = Path(trainer.default_root_dir) / "samples"
        out_dir.mkdir(parents=True, exist_ok=True)
        text = [{k: s[k] for k in ("image_id", "prediction", "references")} for s in self._samples]
        atomic.write_json(out_dir / f"epoch_{epoch:03d}.json", text, indent=1)

        overlays = []
        for sample in self._samples[: self.num_attention]:
            if sample["image"] is None or not sample["prediction"]:
                continue
            # ids of nested trees are "folder/name.jpg": keep the folder, so names stay distinct
            stem = Path(sample["image_id"]).with_suffix("").as_posix().replace("/", "_")
            png = out_dir / f"epoch_{epoch:03d}_{stem}.png"
            attention_overlay(
                sample["image"], sample["prediction"].split(), sample["alphas"], path=png
            )
            overlays.append((sample, png))

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, overlays)

    @staticmethod
    def _picture_from_disk(trainer: L.Trainer, image_id: str) -> np.ndarray | None:
        """The (S, S, 3) uint8 crop the encoder saw when the cache was built (the same resize
        and centre crop), read from the dataset's image folder; None when unavailable."""
        from imgcap.data.transforms import load_image, to_uint8
        from imgcap.errors import DataError

        datamodule = getattr(trainer, "datamodule", None)
        annotations = getattr(datamodule, "annotations", None)
        if annotations is None:
            return None
        try:
            image = load_image(annotations.image_path(image_id))
        except DataError:
            return None
        return to_uint8(image, int(datamodule.image_size)).permute(1, 2, 0).numpy()

    def _log_wandb(self, logger: WandbLogger, overlays: list) -> None:
        import wandb

        rows = [
            [
                s["image_id"],
                wandb.Image(s["image"]) if s["image"] is not None else None,
                s["prediction"],
                "\n".join(s["references"]),
            ]
            for s in self._samples
        ]
        logger.log_table(
            "val/samples", columns=["image", "picture", "prediction", "references"], data=rows
        )
        # Offline runs store images inside tables as the bare word "Image" (a known W&B
        # limitation), so the pictures are also logged as plain images, captioned.
        shown = [s for s in self._samples if s["image"] is not None]
        if shown:
            logger.log_image(
                "val/sample_images",
                images=[s["image"] for s in shown],
                caption=[f"{s['image_id']}: {s['prediction']}" for s in shown],
            )
        if overlays:
            logger.log_image(
                "val/attention",
                images=[str(png) for _, png in overlays],
                caption=[s["prediction"] for s, _ in overlays],
            )
