"""The captioning system: encoder + decoder, the training objective, decoding and metrics.

The decoder (``model/decoder``) and the objective (``model/objective``) are built by name from
plain-dict settings (:mod:`imgcap.decoders.registry`, :mod:`imgcap.objectives`); this module only
uses the decoder contract and asks the objective for the loss.

The module owns no paths, workers or data logic: it receives the vocabulary (a list of words)
and plain settings, and every batch it sees is a dict produced by the data module:

  train:     images (B, 3, H, W) | features (B, P, C), captions (B, T), lengths (B,),
             references list[list[str]], image_ids list[str]
  val/test:  images | features, references list[list[str]], image_ids list[str]

Everything needed to rebuild it is in its hyperparameters (plain values only), so
``CaptioningModule.load_from_checkpoint(path, map_location="cpu")`` is enough to caption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MaxMetric, MinMetric

from imgcap.checkpoint import CHECKPOINT_KEY, first_line, read_checkpoint
from imgcap.decoders import build_decoder
from imgcap.decoders.decoding import DecodeResult, decode
from imgcap.encoders import ImageEncoder, build_encoder
from imgcap.errors import CheckpointError, ConfigError
from imgcap.metrics import CaptionMetric
from imgcap.objectives import ObjectiveContext, build_objective
from imgcap.vocab import Vocabulary, normalize_caption

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class CaptioningModule(L.LightningModule):
    """A CNN encoder and a caption decoder, trained with a pluggable objective.

    Args:
        vocab: the vocabulary's words in id order (``Vocabulary.itos``), specials first.
        encoder: ``{arch, weights, fine_tune, lr, ...}`` for ``build_encoder``; ``lr`` is the
            encoder's own learning rate when it trains.
        decoder: ``{name, **settings}``: ``lstm_attention`` (Show, Attend and Tell; settings
            attention_dim, embed_dim, decoder_dim, dropout, deep_output, unroll) or
            ``transformer`` (d_model, num_layers, num_heads, ff_dim, dropout,
            attention_dropout, max_len, tie_embeddings, region_positions), or any registered
            decoder.
        objective: ``{name, **settings}``: ``xe`` (alpha_c) or ``scst`` (see
            :mod:`imgcap.objectives`).
        encoded_size: the encoder grid is ``encoded_size x encoded_size`` regions (P cells).
        teacher_forcing_ratio: probability of feeding the ground-truth previous word.
        teacher_forcing_schedule: ``{end, epochs}``: decay the ratio linearly to ``end`` over
            ``epochs`` epochs.
        beam_size, max_len, length_penalty: validation/test decoding (beam 1 = greedy).
        meteor: compute METEOR (needs Java) at test time, and in validation as ``val_meteor``
            says; ``false`` turns it off everywhere.
        val_meteor: ``every | last | never``: which validations add METEOR (a JVM, ~17 s for
            1000 images) to BLEU-1..4, ROUGE-L and CIDEr-D, which every validation computes in
            process (equal to pycocoevalcap's). ``last``: the final validation of the fit (the
            last epoch of ``max_epochs``, or ``max_steps`` reached) and a standalone validate.
        optimizer, scheduler: partials (``_partial_: true``) taking params / the optimizer.
        monitor, monitor_mode: the metric the scheduler and the best-so-far value follow.
        cuda_graphs: ``auto | true | false``: let the decoder replay its training unroll as CUDA
            graphs (the LSTM does). ``auto`` turns them on when training on one CUDA device
            (not under DDP).
        channels_last: ``auto | true | false``: NHWC memory format for the encoder on CUDA
            (faster convolutions on tensor cores); ``auto`` = on CUDA only.
        built_encoder: the encoder ``encoder`` describes, already built (the run builds it
            first, to fill the feature cache with it); not a hyperparameter.
        train_references: for each training image, its raw reference captions (what an
            objective such as SCST's CIDEr-D reward counts document frequencies over), given by
            the run from the data; not a hyperparameter (never stored in checkpoints), None
            when the module only captions.
    """

    def __init__(
        self,
        vocab: list[str],
        encoder: dict[str, Any],
        decoder: dict[str, Any] | None = None,
        objective: dict[str, Any] | None = None,
        encoded_size: int = 14,
        teacher_forcing_ratio: float = 1.0,
        teacher_forcing_schedule: dict[str, float] | None = None,
        beam_size: int = 1,
        max_len: int = 20,
        length_penalty: float = 1.0,
        meteor: bool = True,
        val_meteor: str = "last",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        monitor: str = "val/CIDEr",
        monitor_mode: str = "max",
        cuda_graphs: bool | str = "auto",
        channels_last: bool | str = "auto",
        built_encoder: ImageEncoder | None = None,
        train_references: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        _check_switch("cuda_graphs", cuda_graphs)
        _check_switch("channels_last", channels_last)
        if val_meteor not in VAL_METEOR_CHOICES:
            raise ConfigError(
                f"model.val_meteor must be one of {', '.join(VAL_METEOR_CHOICES)}, got "
                f"{val_meteor!r}: set model.val_meteor=last (the default)"
            )
        # Plain dicts (the checkpoint stores them); the names pick the classes.
        decoder = dict(decoder or {"name": "lstm_attention"})
        objective = dict(objective or {"name": "xe"})
        # Partials are code, not settings: a checkpoint must load with weights_only unpickling.
        # Data given at build time is not a setting either (and would bloat every checkpoint).
        self.save_hyperparameters(
            ignore=["optimizer", "scheduler", "built_encoder", "train_references"], logger=False
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_references = train_references

        self.vocab = Vocabulary.from_dict({"itos": list(vocab)})
        encoder_cfg = dict(encoder)
        self.encoder_lr = float(encoder_cfg.pop("lr", 1e-4))
        if built_encoder is None:
            built_encoder = build_encoder(encoded_size=encoded_size, **encoder_cfg)
        elif (built_encoder.arch, built_encoder.encoded_size) != (
            encoder_cfg.get("arch", "resnet50"),
            encoded_size,
        ):
            raise ConfigError(
                f"the given encoder ({built_encoder.arch}, grid {built_encoder.encoded_size}) is "
                f"not the one model.encoder describes ({encoder_cfg.get('arch', 'resnet50')}, grid {encoded_size})"
            )
        self.encoder = built_encoder
        self.decoder = build_decoder(decoder, len(self.vocab), self.encoder.out_dim)
        self.objective = build_objective(objective)
        _check_decoder_fits(self.decoder, teacher_forcing_ratio, teacher_forcing_schedule, max_len)
        # Set by the fine-tuning schedule: the optimizer then holds an encoder group from the
        # start (frozen parameters have no gradient, so the optimizer skips them until unfrozen).
        self.optimize_frozen_encoder = False
        self._channels_last = False  # set in on_fit_start on CUDA

        # Validation scores in process every epoch (its CIDEr picks checkpoints and drives
        # sweeps, and equals evaluate.py's); the test scores come from pycocoevalcap itself.
        self.val_metric = CaptionMetric(meteor=False, backend="fast")
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
    def caption_batch(
        self,
        batch: dict[str, Any],
        beam_sizes: Sequence[int | None] = (None,),
        max_len: int | None = None,
    ) -> list[tuple[list[str], DecodeResult]]:
        """The evaluation step: encode a batch once (images or cached features), then decode it
        with each beam size (None: the model's own); one ``(captions, DecodeResult)`` per beam
        size. Validation, test and ``evaluate.py`` all caption through here."""
        features = self.encode(batch)  # (B, P, C)
        return [self.caption_features(features, beam_size=k, max_len=max_len) for k in beam_sizes]

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
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        lengths: torch.Tensor,
        ratio: float,
        **batch: Any,
    ) -> dict[str, torch.Tensor]:
        """The objective's losses on one batch: features (B, P, C); captions (B, T) as
        ``<start> w1 .. wn <end> <pad>..``; lengths (B,); other batch keys as keywords."""
        batch = {**batch, "captions": captions, "lengths": lengths}
        return self.objective(self.decoder, features, batch, teacher_forcing_ratio=ratio)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        ratio = self.teacher_forcing_ratio()
        features = self.encode(batch)
        losses = self.objective(self.decoder, features, batch, teacher_forcing_ratio=ratio)
        batch_size = features.size(0)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        # Values whose trend matters more than their step-to-step noise (SCST's reward) also
        # get an epoch mean, train/<name>_epoch.
        for name in getattr(self.objective, "epoch_means", ()):
            self.log(
                f"train/{name}_epoch",
                losses[name],
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
            )
        if self.hparams.teacher_forcing_schedule:
            self.log("train/teacher_forcing_ratio", ratio, batch_size=batch_size)
        return losses["loss"]

    def on_fit_start(self) -> None:
        """Give the objective what it needs, then GPU-only speed-ups, decided once the model
        sits on its device."""
        self.objective.setup(self.objective_context())
        if self.device.type != "cuda":
            return
        if _wanted(self.hparams.channels_last, default=True):
            self.encoder.to(memory_format=torch.channels_last)
            self._channels_last = True
        single_process = self.trainer.world_size == 1
        enable_graphs = getattr(self.decoder, "enable_cuda_graphs", None)
        if enable_graphs is not None and _wanted(self.hparams.cuda_graphs, single_process):
            enable_graphs()

    def objective_context(self) -> ObjectiveContext:
        """The vocabulary, and the training references the module was built with."""
        return ObjectiveContext(
            words=self.vocab.itos,
            normalize=normalize_caption,
            train_references=self.train_references,
            max_len=int(self.hparams.max_len),
        )

    # ------------------------------------------------------------------ evaluation
    def on_train_start(self) -> None:
        # The sanity check ran on an untrained model: its score is not a "best so far" (but
        # the best of the epochs before a resume is).
        self._restore_val_best()

    def _restore_val_best(self) -> None:
        self.val_best.reset()
        key = "val/" + self.hparams.monitor.split("/", 1)[-1]
        if key in self.best_val_scores:
            self.val_best(torch.tensor(float(self.best_val_scores[key])))

    def _eval_step(self, batch: dict[str, Any], metric: CaptionMetric) -> dict[str, Any]:
        [(hypotheses, result)] = self.caption_batch(batch)
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

    def validation_meteor(self) -> bool:
        """Whether the validation now ending adds METEOR (``model.meteor`` and ``val_meteor``)."""
        when = self.hparams.get("val_meteor", "last")
        if not self.hparams.meteor or when == "never":
            return False
        if when == "every":
            return True
        trainer = self.trainer
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate(): the only one there is
            return True
        # Not trainer.should_stop: a run stopped by a signal must reach its checkpoint without
        # waiting for METEOR, and early stopping decides only after this hook.
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        return (
            max_epochs is not None and max_epochs > 0 and trainer.current_epoch >= max_epochs - 1
        ) or (max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps)

    def on_validation_epoch_end(self) -> None:
        self.val_metric.meteor = self.validation_meteor()
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
        [(captions, result)] = self.caption_batch(batch)
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
        # The best-so-far scores live outside the state dict; a resumed run needs them to
        # report the same best epoch as an uninterrupted one.
        checkpoint["imgcap_scores"] = {
            "best_val_scores": dict(self.best_val_scores),
            "latest_scores": {k: dict(v) for k, v in self.latest_scores.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        scores = checkpoint.get("imgcap_scores")
        if not scores:
            return
        self.best_val_scores = dict(scores["best_val_scores"])
        self.latest_scores = {k: dict(v) for k, v in scores["latest_scores"].items()}
        self._restore_val_best()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("CaptioningModule needs an optimizer partial to train")
        # Named groups: the LR monitor logs lr-Adam/decoder and lr-Adam/encoder.
        decoder_params = [p for p in self.decoder.parameters() if p.requires_grad]
        groups = [{"params": decoder_params, "name": "decoder"}]
        encoder_params = list(self.encoder.parameters())
        if not self.encoder.is_frozen or self.optimize_frozen_encoder:
            groups.append({"params": encoder_params, "lr": self.encoder_lr, "name": "encoder"})
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


VAL_METEOR_CHOICES = ("every", "last", "never")


def _wanted(setting: bool | str, default: bool) -> bool:
    """``auto`` -> default; booleans as given."""
    return default if setting == "auto" else bool(setting)


def _check_decoder_fits(
    decoder: torch.nn.Module, ratio: float, schedule: dict | None, max_len: int
) -> None:
    """Settings the chosen decoder cannot honour fail here, before any data work, rather than
    at the first training step or after an epoch."""
    name = type(decoder).__name__
    if (float(ratio) < 1.0 or schedule) and not getattr(
        decoder, "supports_scheduled_sampling", False
    ):
        raise ConfigError(
            f"model.teacher_forcing_ratio={ratio} / model.teacher_forcing_schedule={schedule}: "
            f"the {name} does not do scheduled sampling; set model.teacher_forcing_ratio=1.0 "
            "and model.teacher_forcing_schedule=null"
        )
    positions = getattr(decoder, "max_len", None)
    if positions is not None and positions < max_len:
        raise ConfigError(
            f"model.max_len={max_len} is longer than the {name}'s model.decoder.max_len="
            f"{positions} positions: raise model.decoder.max_len or lower model.max_len"
        )


def _check_switch(name: str, value: Any) -> None:
    if value != "auto" and not isinstance(value, bool):
        raise ConfigError(f"model.{name} must be auto, true or false, got {value!r}")


def load_captioner(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the captioning module and its run config from a checkpoint file alone.

    Returns ``(module in eval mode, run_config dict)``. Raises CheckpointError with one line
    naming the file when it is missing, unreadable, unsafe or from an incompatible version.
    """
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path, map_location)
    try:
        model = CaptioningModule(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path} does not match this version's model ({err.__class__.__name__}: "
            f"{first_line(err)}); use it with the imgcap version that trained it"
        ) from None
    model.to(map_location)
    model.eval()
    return model, checkpoint[CHECKPOINT_KEY]["config"]
