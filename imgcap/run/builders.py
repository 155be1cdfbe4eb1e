"""The objects of a run, built from its config in one direction: config -> data -> model ->
trainer. Nothing built later is handed back to something built earlier, and no hook runs twice.

1. The image encoder (:func:`build_encoder_from_config`): first, because the feature cache
   (``data.cache_features``) is computed by it and the model uses the same one.
2. The data module (:func:`build_data`), given that encoder and, with ``init_from=``, the
   trained model's vocabulary; then the vocabulary (global rank zero prepares it: the synthetic
   set, the image checks, the vocabulary file).
3. The model (:func:`build_model`), given the vocabulary, the encoder and what its objective
   needs from the data (the training references, for SCST's CIDEr-D document frequencies).
4. Loggers (:func:`imgcap.run.loggers.build_loggers`), callbacks (:func:`build_callbacks`,
   given what they need from the data) and the Trainer (:func:`build_trainer`), whose hooks
   then prepare the feature caches and build the datasets, once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from imgcap.checkpoint import load_initial_weights, read_checkpoint
from imgcap.errors import ConfigError
from imgcap.run.instantiation import instantiate
from imgcap.vocab import Vocabulary

if TYPE_CHECKING:
    import lightning.pytorch as L

    from imgcap.captioning_module import CaptioningModule
    from imgcap.data.datamodule import CaptionDataModule
    from imgcap.encoders import ImageEncoder

log = logging.getLogger(__name__)

__all__ = [
    "build_callbacks",
    "configured_callbacks",
    "build_data",
    "build_data_and_model",
    "build_encoder_from_config",
    "build_evaluation_data",
    "build_model",
    "build_trainer",
    "instantiate",
]


# ---------------------------------------------------------------------------------- data + model
def build_encoder_from_config(cfg: DictConfig) -> ImageEncoder:
    """The image encoder ``cfg.model`` describes (``model.encoder.*``, ``model.encoded_size``)."""
    from imgcap.encoders import build_encoder

    settings = OmegaConf.to_container(cfg.model.encoder, resolve=True)
    settings.pop("lr", None)  # the encoder's learning rate is the module's business
    return build_encoder(encoded_size=cfg.model.get("encoded_size", 14), **settings)


def check_cacheable(cfg: DictConfig, encoder: ImageEncoder) -> None:
    """Cached features are only right for an encoder that never trains."""
    schedule = (cfg.get("callbacks") or {}).get("encoder_fine_tuning") or {}
    if not encoder.is_frozen or schedule.get("unfreeze_at_epoch") is not None:
        raise ConfigError(
            "data.cache_features=true needs a frozen encoder (model.encoder.fine_tune=frozen "
            "and callbacks.encoder_fine_tuning.unfreeze_at_epoch=null); or set data.cache_features=false"
        )


def build_data(
    cfg: DictConfig, encoder: ImageEncoder, vocab: Vocabulary | None = None
) -> CaptionDataModule:
    """The data module of ``cfg.data``, given the encoder that fills its feature cache (when
    ``data.cache_features``) and the vocabulary that must define the word ids (``init_from=``)."""
    given: dict[str, Any] = {"vocab": vocab}
    if cfg.data.get("cache_features"):
        check_cacheable(cfg, encoder)
        given["feature_encoder"] = encoder
        given["encoder_key"] = {**encoder.cache_key(), "image_size": cfg.data.image_size}
    # A partial, called with the objects: they never pass through OmegaConf.
    return instantiate(cfg.data, _partial_=True)(**given)


def build_model(
    cfg: DictConfig,
    vocab: Vocabulary,
    encoder: ImageEncoder,
    train_references: list[list[str]] | None,
) -> CaptioningModule:
    """The LightningModule of ``cfg.model``, sized to ``vocab``, around ``encoder``."""
    factory = instantiate(cfg.model, _partial_=True)
    return factory(vocab=list(vocab.itos), built_encoder=encoder, train_references=train_references)


def build_data_and_model(cfg: DictConfig) -> tuple[CaptionDataModule, CaptioningModule]:
    """Encoder, then data, then the model sized to the data's vocabulary (see the module
    docstring). ``init_from=`` starts from a trained model's weights and vocabulary (e.g. SCST
    after cross-entropy), not its optimizer or epoch: its vocabulary defines the word ids,
    whatever this data would build.

    Under DDP the other ranks re-run the script after rank zero has started: only global rank
    zero prepares (generates the synthetic set, checks the images, writes the vocabulary); the
    others read the vocabulary file it wrote. The Trainer's ``prepare_data`` hook (local rank
    zero) then fills the feature caches on the training device, and ``setup`` (every rank)
    builds the datasets.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    initial = None
    if cfg.get("init_from") and not cfg.get("ckpt_path"):
        initial = read_checkpoint(cfg.init_from)
    # Same construction order as a model building its own encoder: the same weights per seed.
    encoder = build_encoder_from_config(cfg)
    given_vocab = (
        Vocabulary.from_dict({"itos": initial["hyper_parameters"]["vocab"]}) if initial else None
    )
    datamodule = build_data(cfg, encoder, given_vocab)
    if rank_zero_only.rank == 0:
        vocab = datamodule.prepare_vocabulary()
    else:
        vocab = datamodule.vocabulary()
    model = build_model(cfg, vocab, encoder, datamodule.train_references())
    if initial is not None:
        load_initial_weights(model, initial, cfg.init_from)  # into the shared encoder too
    return datamodule, model


def build_evaluation_data(
    cfg: DictConfig, run_config: dict[str, Any], vocab: Vocabulary, split: str
) -> CaptionDataModule:
    """The data module that scores a checkpoint: the training run's data settings (from the
    checkpoint) with ``evaluate.py``'s overrides, the model's vocabulary, the images of
    ``split`` only, and no feature cache (one pass: the encoder runs on the images directly)."""
    overrides = {k: v for k, v in (cfg.get("data") or {}).items() if v is not None}
    data_cfg = OmegaConf.merge(run_config["data"], overrides)
    data_cfg.cache_features = False
    data_cfg.num_workers = cfg.num_workers
    data_cfg.persistent_workers = False
    data_cfg.quiet = bool(cfg.get("quiet", False))
    if cfg.batch_size:
        data_cfg.eval_batch_size = cfg.batch_size
    data_cfg.check_splits = [split]  # only the images scored are checked
    datamodule = instantiate(data_cfg, _partial_=True)(vocab=vocab)
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    return datamodule


# ---------------------------------------------------------------------------------- callbacks
def build_callbacks(
    cfg: DictConfig,
    datamodule: CaptionDataModule,
    loggers: list[Any],
    trial: L.Callback | None = None,
) -> list[L.Callback]:
    """Every callback of a training run: the configured ones (:func:`configured_callbacks`)
    between the ones every run has. The finite guard comes first: its checks run before any
    checkpoint callback saves. Build after the loggers: the run config stored in checkpoints
    holds the W&B run id they fix. ``trial``: a sweep's trial reporter, when in one."""
    from imgcap.callbacks import (
        FiniteGuard,
        RngState,
        RunConfigInCheckpoint,
        ValidateAfterLastEpoch,
    )
    from imgcap.run.csv_history import TrimRepeatedRows
    from imgcap.run.resume import job_overrides

    overrides, choices = job_overrides()
    run_config = OmegaConf.to_container(cfg, resolve=True)
    return [
        FiniteGuard(),
        *configured_callbacks(cfg, datamodule, has_logger=bool(loggers)),
        RunConfigInCheckpoint(run_config, overrides, choices),
        RngState(),
        ValidateAfterLastEpoch(),
        TrimRepeatedRows(),
        *([trial] if trial is not None else []),
    ]


def configured_callbacks(
    cfg: DictConfig, datamodule: CaptionDataModule, has_logger: bool
) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks`` (one entry each, see ``conf/callbacks/``), in order.

    A callback that needs something from the data asks for it by a constructor argument
    named in :func:`data_inputs` (e.g. ``pictures``, the crops the encoder sees); the run passes
    it here, at build time, so no callback reaches into the Trainer for the data module."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    inputs = data_inputs(datamodule)
    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        if node is None:
            continue
        wanted = _arguments_of(node.get("_target_"))
        given = {k: v for k, v in inputs.items() if k in wanted}
        # A partial, called with the objects: they never pass through OmegaConf.
        callbacks.append(instantiate(node, _partial_=True)(**given) if given else instantiate(node))
    if not has_logger:  # the LR monitor has nowhere to write and Lightning refuses it
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def data_inputs(datamodule: CaptionDataModule) -> dict[str, Callable[..., Any]]:
    """What a callback may ask of the data, by constructor argument name."""
    return {"pictures": datamodule.picture}


def _arguments_of(target: str | None) -> set[str]:
    if not target:
        return set()
    from hydra.utils import get_object

    try:
        return set(inspect.signature(get_object(str(target))).parameters)
    except (ImportError, ValueError, TypeError, AttributeError):
        return set()  # instantiate reports a bad target in its own words


# ---------------------------------------------------------------------------------- trainer
def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Any]) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the run's callbacks and loggers. Checkpoints are
    written to a temp file and renamed: a full disk never truncates best.ckpt."""
    from imgcap.run.checkpoint_io import AtomicCheckpointIO

    extra: dict[str, Any] = {}
    if "enable_model_summary" not in cfg.trainer:
        extra["enable_model_summary"] = False  # the one-line summary of the run replaces it
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **extra,
    )
