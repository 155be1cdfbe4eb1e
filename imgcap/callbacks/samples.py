"""The sample report: a few validation images with their captions and attention, written to
``samples/`` each epoch and to W&B."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from imgcap import atomic
from imgcap.data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


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

    ``pictures``: ``image_id -> (S, S, 3) uint8 | None``, the crop the encoder sees of an image
    (the data module's ``picture``), given by the run when it builds the callbacks; without it
    samples on cached features have no picture.
    """

    def __init__(
        self,
        num_samples: int = 8,
        num_attention: int = 2,
        pictures: Callable[[str], np.ndarray | None] | None = None,
    ) -> None:
        self.num_samples = num_samples
        self.num_attention = num_attention
        self.pictures = pictures
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
        from imgcap.api.visualize import attention_overlay

        for sample in self._samples:
            if sample["image"] is None and self.pictures is not None:
                sample["image"] = self.pictures(sample["image_id"])  # cached features: from disk
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
