"""Training callbacks: encoder fine-tuning schedule, sample captions/attention, run config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from imgcap.checkpoint import CHECKPOINT_KEY, run_config_entry
from imgcap.data.transforms import IMAGENET_MEAN, IMAGENET_STD

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
    """Store the resolved run config in every checkpoint, so a checkpoint alone suffices."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        self.run_config = run_config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = run_config_entry(self.run_config)


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
    """

    def __init__(self, num_samples: int = 8, num_attention: int = 2) -> None:
        self.num_samples = num_samples
        self.num_attention = num_attention
        self._samples: list[dict[str, Any]] = []

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
        (out_dir / f"epoch_{epoch:03d}.json").write_text(json.dumps(text, indent=1))

        overlays = []
        for sample in self._samples[: self.num_attention]:
            if sample["image"] is None or not sample["prediction"]:
                continue
            png = out_dir / f"epoch_{epoch:03d}_{Path(sample['image_id']).stem}.png"
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
            image = load_image(Path(annotations.image_dir) / image_id)
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
