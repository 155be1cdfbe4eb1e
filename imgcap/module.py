"""The captioning system: encoder + attention decoder, their loss, decoding and metrics.

The module owns no paths, workers or data logic: it receives the vocabulary (a list of words)
and plain settings, and every batch it sees is a dict produced by the data module:

  train:     images (B, 3, H, W) | features (B, P, C), captions (B, T), lengths (B,)
  val/test:  images | features, references list[list[str]], image_ids list[str]

Everything needed to rebuild it is in its hyperparameters (plain values only), so
``CaptioningModule.load_from_checkpoint(path, map_location="cpu")`` is enough to caption.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
from torchmetrics import MaxMetric, MinMetric

from imgcap.data.vocab import Vocabulary
from imgcap.errors import ConfigError
from imgcap.metrics import CaptionMetric
from imgcap.models.cuda_graphs import GraphedUnroll
from imgcap.models.decoder import AttentionLSTMDecoder
from imgcap.models.decoding import DecodeResult, decode
from imgcap.models.encoder import build_encoder
from imgcap.objectives import xe_attention_loss

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class CaptioningModule(L.LightningModule):
    """Show, Attend and Tell trained with teacher forcing (optionally scheduled sampling).

    Args:
        vocab: the vocabulary's words in id order (``Vocabulary.itos``), specials first.
        encoder: ``{arch, weights, fine_tune, lr, ...}`` for ``build_encoder``; ``lr`` is the
            encoder's own learning rate when it trains.
        attention_dim, embed_dim, decoder_dim, dropout, deep_output: decoder sizes.
        alpha_c: weight of the doubly stochastic attention penalty.
        encoded_size: the encoder grid is ``encoded_size x encoded_size`` regions (P cells).
        teacher_forcing_ratio: probability of feeding the ground-truth previous word.
        teacher_forcing_schedule: ``{end, epochs}``: decay the ratio linearly to ``end`` over
            ``epochs`` epochs.
        beam_size, max_len, length_penalty: validation/test decoding (beam 1 = greedy).
        meteor: compute METEOR (needs Java) during validation/test.
        optimizer, scheduler: partials (``_partial_: true``) taking params / the optimizer.
        monitor, monitor_mode: the metric the scheduler and the best-so-far value follow.
        decoder_unroll: ``auto | shrink | fixed``, how the teacher-forced decoder is unrolled
            (see ``imgcap.models.decoder``); ``auto`` is ``fixed`` on CUDA, ``shrink`` elsewhere.
        cuda_graphs: ``auto | true | false``: replay the fixed unroll as CUDA graphs. ``auto``
            turns them on when training on one CUDA device (not under DDP).
        channels_last: ``auto | true | false``: NHWC memory format for the encoder on CUDA
            (faster convolutions on tensor cores); ``auto`` = on CUDA only.
    """

    def __init__(
        self,
        vocab: list[str],
        encoder: dict[str, Any],
        attention_dim: int = 512,
        embed_dim: int = 512,
        decoder_dim: int = 512,
        dropout: float = 0.5,
        deep_output: bool = False,
        alpha_c: float = 1.0,
        encoded_size: int = 14,
        teacher_forcing_ratio: float = 1.0,
        teacher_forcing_schedule: dict[str, float] | None = None,
        beam_size: int = 1,
        max_len: int = 20,
        length_penalty: float = 1.0,
        meteor: bool = True,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        monitor: str = "val/CIDEr",
        monitor_mode: str = "max",
        decoder_unroll: str = "auto",
        cuda_graphs: bool | str = "auto",
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__()
        _check_switch("cuda_graphs", cuda_graphs)
        _check_switch("channels_last", channels_last)
        # Partials are code, not settings: a checkpoint must load with weights_only unpickling.
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

        self.vocab = Vocabulary.from_dict({"itos": list(vocab)})
        encoder_cfg = dict(encoder)
        self.encoder_lr = float(encoder_cfg.pop("lr", 1e-4))
        self.encoder = build_encoder(encoded_size=encoded_size, **encoder_cfg)
        self.decoder = AttentionLSTMDecoder(
            vocab_size=len(self.vocab),
            encoder_dim=self.encoder.out_dim,
            embed_dim=embed_dim,
            decoder_dim=decoder_dim,
            attention_dim=attention_dim,
            dropout=dropout,
            deep_output=deep_output,
            unroll=decoder_unroll,
        )
        # Set by the fine-tuning schedule: the optimizer then holds an encoder group from the
        # start (frozen parameters have no gradient, so the optimizer skips them until unfrozen).
        self.optimize_frozen_encoder = False
        self._channels_last = False  # set in on_fit_start on CUDA

        self.val_metric = CaptionMetric(meteor=meteor)
        self.test_metric = CaptionMetric(meteor=meteor)
        self.val_best = MaxMetric() if monitor_mode == "max" else MinMetric()
        # Every val/* score of the epoch that set the best monitored value, and the latest
        # scores of each stage, as exact Python floats (logged values become float32 tensors).
        self.best_val_scores: dict[str, float] = {}
        self.latest_scores: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ features and decoding
    def encode(self, batch: dict[str, Any]) -> torch.Tensor:
        """Cached features when the batch carries them, else the encoder on the images.

        Returns (B, P, C)."""
        if "features" in batch:
            return batch["features"].float()
        images = batch["images"]
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.encoder(images)

    @torch.no_grad()
    def caption_features(
        self,
        features: torch.Tensor,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> tuple[list[str], DecodeResult]:
        """Decode (B, P, C) features into caption strings (greedy when beam_size is 1)."""
        result = decode(
            self.decoder,
            features,
            beam_size=beam_size or self.hparams.beam_size,
            max_len=max_len or self.hparams.max_len,
            length_penalty=self.hparams.length_penalty,
        )
        return [self.vocab.decode(t) for t in result.tokens], result

    # ------------------------------------------------------------------ training
    def teacher_forcing_ratio(self) -> float:
        """The ratio for the current epoch: constant, or linearly decayed by the schedule."""
        start = float(self.hparams.teacher_forcing_ratio)
        schedule = self.hparams.teacher_forcing_schedule
        if not schedule:
            return start
        progress = min(1.0, self.current_epoch / max(1, int(schedule["epochs"])))
        return start + (float(schedule["end"]) - start) * progress

    def compute_loss(
        self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, ratio: float
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy over non-pad targets + ``alpha_c * ((1 - sum_t alpha_t)^2).mean()``.

        features (B, P, C); captions (B, T) as ``<start> w1 .. wn <end> <pad>..``; lengths (B,).
        """
        logits, alphas = self.decoder(features, captions, lengths, teacher_forcing_ratio=ratio)
        return xe_attention_loss(logits, alphas, captions[:, 1:], self.hparams.alpha_c)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        ratio = self.teacher_forcing_ratio()
        losses = self.compute_loss(self.encode(batch), batch["captions"], batch["lengths"], ratio)
        batch_size = batch["captions"].size(0)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        self.log("train/perplexity", torch.exp(losses["xe"].detach()), batch_size=batch_size)
        if self.hparams.teacher_forcing_schedule:
            self.log("train/teacher_forcing_ratio", ratio, batch_size=batch_size)
        return losses["loss"]

    def on_fit_start(self) -> None:
        """GPU-only speed-ups, decided once the model sits on its device."""
        if self.device.type != "cuda":
            return
        if _wanted(self.hparams.channels_last, default=True):
            self.encoder.to(memory_format=torch.channels_last)
            self._channels_last = True
        single_process = self.trainer.world_size == 1
        if (
            _wanted(self.hparams.cuda_graphs, default=single_process)
            and self.decoder.unroll_mode(self.device) == "fixed"
        ):
            self.decoder.fixed_runner = GraphedUnroll(self.decoder)

    # ------------------------------------------------------------------ evaluation
    def on_train_start(self) -> None:
        # The sanity check ran on an untrained model: its score is not a "best so far".
        self.val_best.reset()

    def _eval_step(self, batch: dict[str, Any], metric: CaptionMetric) -> dict[str, Any]:
        hypotheses, result = self.caption_features(self.encode(batch))
        metric.update(hypotheses, batch["references"], batch["image_ids"])
        return {"hypotheses": hypotheses, "alphas": result.alphas}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.val_metric)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.test_metric)

    def _log_scores(self, stage: str, metric: CaptionMetric) -> dict[str, float]:
        scores = {k: float(v) for k, v in metric.compute().items()}  # gathered across processes
        metric.reset()
        self.latest_scores[stage] = scores
        for name, value in scores.items():
            self.log(f"{stage}/{name}", value, sync_dist=False)
        return scores

    def on_validation_epoch_end(self) -> None:
        scores = self._log_scores("val", self.val_metric)
        monitor = self.hparams.monitor
        name = monitor.split("/", 1)[-1]
        if self.trainer.sanity_checking or not monitor.startswith("val/") or name not in scores:
            return
        previous = self.val_best.compute().item() if self.best_val_scores else None
        self.val_best(torch.tensor(float(scores[name])))
        best = self.val_best.compute().item()
        self.log(f"{monitor}_best", best, sync_dist=False)
        if previous is None or best != previous:
            self.best_val_scores = {f"val/{k}": float(v) for k, v in scores.items()}
            self.best_val_scores["best_epoch"] = self.current_epoch

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_metric)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Returns one ``{image_id, caption, words, alphas (L, P)}`` dict per image."""
        captions, result = self.caption_features(self.encode(batch))
        ids = batch.get("image_ids") or [str(i) for i in range(len(captions))]
        return [
            {"image_id": i, "caption": c, "words": c.split(), "alphas": a.cpu()}
            for i, c, a in zip(ids, captions, result.alphas, strict=True)
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict holds every encoder weight, so rebuilding from the checkpoint must not
        # fetch pretrained weights again (offline machines could not).
        encoder = checkpoint["hyper_parameters"]["encoder"]
        checkpoint["hyper_parameters"]["encoder"] = {**encoder, "weights": None}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("CaptioningModule needs an optimizer partial to train")
        groups = [{"params": [p for p in self.decoder.parameters() if p.requires_grad]}]
        encoder_params = list(self.encoder.parameters())
        if not self.encoder.is_frozen or self.optimize_frozen_encoder:
            groups.append({"params": encoder_params, "lr": self.encoder_lr})
        optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # Step only on epochs that produced the monitored metric.
            config["monitor"] = self.hparams.monitor
            config["frequency"] = max(1, int(self.trainer.check_val_every_n_epoch or 1))
        return {"optimizer": optimizer, "lr_scheduler": config}


def _wanted(setting: bool | str, default: bool) -> bool:
    """``auto`` -> default; booleans as given."""
    return default if setting == "auto" else bool(setting)


def _check_switch(name: str, value: Any) -> None:
    if value != "auto" and not isinstance(value, bool):
        raise ConfigError(f"model.{name} must be auto, true or false, got {value!r}")
