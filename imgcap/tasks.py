"""What the entry scripts run: ``train(cfg)``, ``evaluate(cfg)`` and ``caption(cfg)``.

Each takes a composed Hydra config (so tests call them in-process with ``compose``), writes its
results into ``cfg.paths.output_dir`` and returns them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from imgcap.callbacks import FiniteGuard, InterruptCheckpoint, RngState, RunConfigInCheckpoint
from imgcap.checkpoint import load_captioner
from imgcap.config_checks import check_train_config
from imgcap.errors import ConfigError, ImgcapError, Interrupted
from imgcap.hardware import register_resolvers, use_tensor_cores_for_float32
from imgcap.metrics import compute_caption_metrics
from imgcap.resume import job_overrides, resume_config, signal_stop

log = logging.getLogger(__name__)
register_resolvers()

METRIC_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


# ---------------------------------------------------------------------------------- helpers
def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a user mistake found while building (an ImgcapError,
    e.g. an unknown encoder arch) surfaces as itself rather than wrapped in Hydra's error."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ImgcapError):
            raise err.__cause__ from None
        raise


def write_json(path: Path, payload: Any) -> None:
    """Write JSON through a temp file + rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def format_scores(scores: dict[str, float], title: str) -> str:
    """A small aligned table of metric values for the terminal."""
    names = [n for n in METRIC_ORDER if n in scores] + sorted(set(scores) - set(METRIC_ORDER))
    width = max(len(n) for n in names) if names else 0
    lines = [title] + [f"  {n:<{width}}  {scores[n]:.4f}" for n in names]
    return "\n".join(lines)


def configure_wandb_environment() -> None:
    """Never prompt for a login: without credentials, W&B logs offline (sync later)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path.home() / ".netrc"
    if not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")):
        os.environ["WANDB_MODE"] = "offline"
        log.info("no W&B credentials found: logging offline (upload later with `wandb sync`)")


def sweep_job() -> tuple[str, str] | None:
    """(sweep directory name, this job's overrides) under a Hydra multirun, else None.

    W&B groups a sweep's runs by the first and names each run by the second."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:  # not running under @hydra.main (e.g. tests calling train directly)
        return None
    if str(hydra_cfg.mode) != "RunMode.MULTIRUN":
        return None
    return Path(hydra_cfg.sweep.dir).name, hydra_cfg.job.override_dirname or str(hydra_cfg.job.num)


def build_loggers(cfg: DictConfig) -> list[Logger]:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
        if "WandbLogger" in logger_cfg.get("_target_", ""):
            configure_wandb_environment()
            watch = logger_cfg.pop("watch", None), logger_cfg.pop("watch_log_freq", 100)
            group, name = sweep_job() or (None, None)
            logger_cfg["group"] = logger_cfg.get("group") or group
            logger_cfg["name"] = logger_cfg.get("name") or name
            logger = instantiate(logger_cfg)
            logger._imgcap_watch = watch
        else:
            logger = instantiate(logger_cfg)
        loggers.append(logger)
        log.info("logger %s: %s", name, type(logger).__name__)
    return loggers


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:  # the LR monitor has nowhere to write and Lightning refuses it
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_data_and_model(cfg: DictConfig):
    """Check the data and build the vocabulary, then size the model to it.

    The expensive data work is left to the Trainer's hooks: ``prepare_data`` (local rank zero
    only, the other ranks wait) computes the feature cache on the training device, and ``setup``
    on every rank reads it. Here only global rank zero prepares (generates the synthetic set,
    checks the images, writes the vocabulary); every rank then reads the vocabulary the model
    is sized from. Under DDP the other ranks re-run this script after rank zero has started.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    datamodule = instantiate(cfg.data)
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()
    datamodule.setup("fit")  # vocabulary only when the feature cache waits for its encoder
    model = instantiate(cfg.model, vocab=datamodule.vocab.itos)
    if cfg.data.get("cache_features"):
        schedule = (cfg.get("callbacks") or {}).get("encoder_fine_tuning") or {}
        if not model.encoder.is_frozen or schedule.get("unfreeze_at_epoch") is not None:
            raise ConfigError(
                "data.cache_features=true needs a frozen encoder (model.encoder.fine_tune=frozen "
                "and callbacks.encoder_fine_tuning.unfreeze_at_epoch=null); or set data.cache_features=false"
            )
        key = {**model.encoder.cache_key(), "image_size": cfg.data.image_size}
        datamodule.attach_feature_encoder(model.encoder, key)
    return datamodule, model


# ---------------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> float | None:
    """Fit, then test the best checkpoint; write ``metrics.json``; return ``optimized_metric``.

    With ``ckpt_path=`` the run the checkpoint came from resumes, in its own directory and with
    its own config (see :mod:`imgcap.resume`); without it a fresh run starts, never a resume.
    """
    if cfg.get("ckpt_path"):
        cfg = resume_config(cfg)  # reads the checkpoint safely: one line when it is bad
    check_train_config(cfg)
    resume_from = cfg.get("ckpt_path") or None
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    use_tensor_cores_for_float32()

    datamodule, model = build_data_and_model(cfg)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    loggers = build_loggers(cfg)
    overrides, choices = job_overrides()
    # The guard comes first: its checks run before any checkpoint callback saves.
    callbacks = [
        FiniteGuard(),
        *build_callbacks(cfg, has_logger=bool(loggers)),
        RunConfigInCheckpoint(run_config, overrides, choices),
        RngState(),
    ]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(run_config)
        watch, freq = getattr(logger, "_imgcap_watch", (None, 100))
        if watch:
            logger.watch(model, log=watch, log_freq=freq)

    try:
        with warnings.catch_warnings(), signal_stop(trainer) as stop:
            # Resuming mid-epoch is exact here (the sampler restarts at the checkpoint's
            # position), which Lightning cannot see and warns about.
            warnings.filterwarnings("ignore", message=r".*dataloader is not resumable.*")
            warnings.filterwarnings("ignore", message=r".*ckpt_path=.*")
            if resume_from:  # continuing in its own directory, which holds its checkpoints
                warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
            try:
                trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
                if stop.signum is not None:  # arrived after the last safe point of fitting
                    raise SIGTERMException()
                metrics = dict(model.best_val_scores)
                best_path = (
                    trainer.checkpoint_callback.best_model_path
                    if trainer.checkpoint_callback
                    else ""
                )
                if cfg.get("test"):
                    # Without a checkpoint (fast_dev_run) the final weights are tested.
                    trainer.test(
                        model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True
                    )
                    if stop.signum is not None:
                        raise SIGTERMException()
                    test_scores = model.latest_scores.get("test", {})
                    metrics.update({f"test/{k}": v for k, v in test_scores.items()})
            except (SystemExit, KeyboardInterrupt) as err:
                raise interrupted(trainer, stop, output_dir) from err
        metrics["best_checkpoint"] = best_path or None
        metrics["epochs"] = trainer.current_epoch
        write_json(output_dir / "metrics.json", metrics)
    finally:
        finish_wandb(loggers)

    test_scores = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("test/")}
    if test_scores:
        print(format_scores(test_scores, f"test scores ({output_dir / 'metrics.json'}):"))
    objective = cfg.get("optimized_metric")
    return metrics.get(objective) if objective else None


def interrupted(trainer: L.Trainer, stop: Any, output_dir: Path) -> Interrupted:
    """The one line (and exit status) for a run stopped by a signal or Ctrl-C."""
    saved = next(
        (cb.saved for cb in trainer.callbacks if isinstance(cb, InterruptCheckpoint) and cb.saved),
        None,
    )
    if saved is None:  # stopped while testing: training itself is complete
        last = output_dir / "checkpoints" / "last.ckpt"
        saved = last if last.is_file() else None
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
    if saved is None:
        message = f"interrupted by {stop.name} at {where}; no checkpoint to resume from was written"
    else:
        message = (
            f"interrupted by {stop.name} at {where}; saved {saved}. "
            f"Resume with: python train.py ckpt_path={saved}"
        )
    print(message, file=sys.stderr)
    return Interrupted(message, stop.exit_code)


def finish_wandb(loggers: list) -> None:
    """Close the W&B run so that the next job of a sweep starts a run of its own."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
        # Stop the background service too: it closes the run's log file, so an offline run is
        # complete on disk (ready for `wandb sync`) when train() returns.
        wandb.teardown()


# ---------------------------------------------------------------------------------- evaluate
def _device(accelerator: str) -> torch.device:
    if accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(accelerator)


def beam_sizes(value: Any, default: int) -> list[int]:
    """``beam_size=3`` or ``beam_size='[1,3,5]'`` -> a list of positive ints."""
    if value is None:
        value = default
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]
    try:
        sizes = [int(v) for v in values]
    except (TypeError, ValueError):
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(
            f"beam_size={value} must be a positive int or a list of them, e.g. beam_size='[1,3]'"
        )
    return sizes


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score a checkpoint on a split with one or more beam sizes, in one pass over the encoder.

    Writes ``metrics.json`` (``<split>/<metric>`` for the first beam size, plus every beam size
    under ``by_beam_size``) and ``predictions.json`` (image, hypothesis, references).
    """
    from tqdm.auto import tqdm

    output_dir = Path(cfg.paths.output_dir)
    device = _device(cfg.accelerator)
    split = cfg.split
    if split not in ("val", "test"):
        raise ConfigError(f"split={split!r} is not one of val, test")
    model, run_config = load_captioner(cfg.ckpt, map_location=device)
    beams = beam_sizes(cfg.beam_size, default=model.hparams.beam_size)

    data_cfg = OmegaConf.merge(run_config["data"], cfg.get("data") or {})
    data_cfg.cache_features = False  # one pass: the encoder runs on the images directly
    data_cfg.num_workers = cfg.num_workers
    data_cfg.persistent_workers = False
    data_cfg.quiet = bool(cfg.get("quiet", False))
    if cfg.batch_size:
        data_cfg.eval_batch_size = cfg.batch_size
    datamodule = instantiate(data_cfg)
    datamodule.vocab = model.vocab
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()

    hypotheses: dict[int, list[str]] = {k: [] for k in beams}
    references: list[list[str]] = []
    image_ids: list[str] = []
    with torch.inference_mode():
        for batch in tqdm(
            loader, desc=f"evaluate {split}", unit="batch", disable=cfg.get("quiet", False)
        ):
            features = model.encode(
                {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            )
            for k in beams:
                captions, _ = model.caption_features(features, beam_size=k, max_len=cfg.max_len)
                hypotheses[k].extend(captions)
            references.extend(batch["references"])
            image_ids.extend(batch["image_ids"])

    by_beam = {
        str(k): compute_caption_metrics(hypotheses[k], references, meteor=cfg.meteor) for k in beams
    }
    first = str(beams[0])
    metrics: dict[str, Any] = {f"{split}/{n}": v for n, v in by_beam[first].items()}
    metrics.update({"beam_size": beams[0], "by_beam_size": by_beam, "ckpt": str(cfg.ckpt)})
    predictions = [
        {
            "image": image_id,
            "hypothesis": hypotheses[beams[0]][i],
            "references": references[i],
            **(
                {"hypotheses_by_beam_size": {str(k): hypotheses[k][i] for k in beams}}
                if len(beams) > 1
                else {}
            ),
        }
        for i, image_id in enumerate(image_ids)
    ]
    write_json(output_dir / "metrics.json", metrics)
    write_json(output_dir / "predictions.json", predictions)
    for k in beams:
        print(
            format_scores(
                by_beam[str(k)], f"{split} scores, beam size {k} ({len(image_ids)} images):"
            )
        )
    print(f"wrote {output_dir / 'metrics.json'} and {output_dir / 'predictions.json'}")
    return metrics


# ---------------------------------------------------------------------------------- caption
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def collect_images(images: Any) -> list[Path]:
    """A list of paths, or one folder (its images, sorted), or one file."""
    items = (
        list(images) if isinstance(images, list | tuple) or OmegaConf.is_list(images) else [images]
    )
    paths: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise ImgcapError(f"image not found: {path} (images= takes files or a folder)")
    if not paths:
        raise ImgcapError(
            f"no images found in {items} (supported: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return paths


def caption(cfg: DictConfig) -> list[dict[str, Any]]:
    """Caption the user's own photos; optionally write attention overlays as PNGs."""
    from imgcap.data.transforms import eval_transform, load_image
    from imgcap.visualize import attention_overlay

    output_dir = Path(cfg.paths.output_dir)
    device = _device(cfg.accelerator)
    model, run_config = load_captioner(cfg.ckpt, map_location=device)
    image_size = int(run_config["data"]["image_size"])
    transform = eval_transform(image_size)

    results = []
    for path in collect_images(cfg.images):
        image = load_image(path)
        pixels = transform(image).unsqueeze(0).to(device)  # (1, 3, S, S)
        with torch.inference_mode():
            captions, decoded = model.caption_features(
                model.encoder(pixels), beam_size=cfg.beam_size, max_len=cfg.max_len
            )
        text = captions[0]
        record: dict[str, Any] = {"image": str(path), "caption": text}
        if cfg.attention and text:
            png = output_dir / "attention" / f"{path.stem}.png"
            shown = image.resize((image_size, image_size))
            attention_overlay(shown, text.split(), decoded.alphas[0].cpu(), path=png)
            record["attention_png"] = str(png)
        print(f"{path}: {text}")
        results.append(record)
    write_json(output_dir / "captions.json", results)
    return results
