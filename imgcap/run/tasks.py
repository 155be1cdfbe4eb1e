"""What the entry scripts run: ``train(cfg)``, ``evaluate(cfg)`` and ``caption(cfg)``.

Each takes a composed Hydra config (so tests call them in-process with ``compose``), writes its
results into ``cfg.paths.output_dir`` and returns them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from imgcap import atomic
from imgcap.callbacks import (
    FiniteGuard,
    InterruptCheckpoint,
    RngState,
    RunConfigInCheckpoint,
    ValidateAfterLastEpoch,
)
from imgcap.checkpoint import load_initial_weights, read_checkpoint
from imgcap.errors import ConfigError, ImgcapError, Interrupted
from imgcap.metrics import compute_caption_metrics, scoring_info
from imgcap.phase_timing import find_phase_timer
from imgcap.run.checkpoint_io import AtomicCheckpointIO
from imgcap.run.checks import check_train_config
from imgcap.run.cli import is_rank_zero, show_config
from imgcap.run.csv_history import TrimRepeatedRows
from imgcap.run.hardware import register_resolvers, use_tensor_cores_for_float32
from imgcap.run.instantiation import instantiate
from imgcap.run.loggers import (
    build_loggers,
    finish_loggers,
    human_count,
    log_run_summary,
    parameter_counts,
)
from imgcap.run.provenance import provenance
from imgcap.run.resume import (
    job_overrides,
    killed_worker_signal,
    record_resume,
    resume_config,
    signal_stop,
)
from imgcap.settings import check_beam_size
from imgcap.sweep.reporter import mark_pruned, reporter_for_this_job, trial_summary
from imgcap.vocab import Vocabulary

log = logging.getLogger(__name__)
register_resolvers()

METRIC_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


# ---------------------------------------------------------------------------------- helpers
def write_json(path: Path, payload: Any) -> None:
    """Write JSON through a temp file + rename: a crash never leaves half a file."""
    atomic.write_json(path, payload)


def format_scores(scores: dict[str, float], title: str) -> str:
    """A small aligned table of metric values for the terminal."""
    names = [n for n in METRIC_ORDER if n in scores] + sorted(set(scores) - set(METRIC_ORDER))
    width = max(len(n) for n in names) if names else 0
    lines = [title] + [f"  {n:<{width}}  {scores[n]:.4f}" for n in names]
    return "\n".join(lines)


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
    # init_from= starts from a trained model's weights and vocabulary (e.g. SCST after
    # cross-entropy), not its optimizer or epoch: its vocabulary must define the word ids,
    # whatever this data would build.
    initial = None
    if cfg.get("init_from") and not cfg.get("ckpt_path"):
        initial = read_checkpoint(cfg.init_from)
        datamodule.vocab = Vocabulary.from_dict({"itos": initial["hyper_parameters"]["vocab"]})
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()
    datamodule.setup("fit")  # vocabulary only when the feature cache waits for its encoder
    # With the feature cache the encoder is built first and handed to both the cache and the
    # model (same construction order, so the same weights under the same seed).
    encoder = build_feature_encoder(cfg) if cfg.data.get("cache_features") else None
    handed = {"built_encoder": encoder} if encoder is not None else {}
    model = instantiate(cfg.model, vocab=datamodule.vocab.itos, **handed)
    if initial is not None:
        load_initial_weights(model, initial, cfg.init_from)  # into the shared encoder too
    if encoder is not None:
        schedule = (cfg.get("callbacks") or {}).get("encoder_fine_tuning") or {}
        if not encoder.is_frozen or schedule.get("unfreeze_at_epoch") is not None:
            raise ConfigError(
                "data.cache_features=true needs a frozen encoder (model.encoder.fine_tune=frozen "
                "and callbacks.encoder_fine_tuning.unfreeze_at_epoch=null); or set data.cache_features=false"
            )
        key = {**encoder.cache_key(), "image_size": cfg.data.image_size}
        datamodule.attach_feature_encoder(encoder, key)
    return datamodule, model


def build_feature_encoder(cfg: DictConfig) -> torch.nn.Module:
    """The image encoder ``cfg.model`` describes, built on its own (for the feature cache)."""
    from imgcap.encoders import build_encoder

    settings = OmegaConf.to_container(cfg.model.encoder, resolve=True)
    settings.pop("lr", None)
    return build_encoder(encoded_size=cfg.model.get("encoded_size", 14), **settings)


# ---------------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> float | None:
    """Fit, then test the best checkpoint; write ``metrics.json``; return ``optimized_metric``.

    With ``ckpt_path=`` the run the checkpoint came from resumes, in its own directory and with
    its own config (see :mod:`imgcap.run.resume`); without it a fresh run starts, never a resume.
    Validation always runs after the last epoch (whatever ``check_val_every_n_epoch``), so every
    run that trains has a best checkpoint, samples and an objective for sweeps.
    """
    if cfg.get("ckpt_path"):
        cfg = resume_config(cfg)  # reads the checkpoint safely: one line when it is bad
    check_train_config(cfg)
    resume_from = cfg.get("ckpt_path") or None
    if resume_from:
        record_resume(cfg)  # .hydra/resumes.yaml: when, from which checkpoint, which overrides
    show_config(cfg)  # after the checks, the config actually used (a resumed run's own)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    use_tensor_cores_for_float32()

    datamodule, model = build_data_and_model(cfg)
    annotations = getattr(datamodule, "annotations", None)
    split_info = annotations.split_info() if annotations is not None else {}
    params = parameter_counts(model)
    if is_rank_zero():
        if annotations is not None:
            log.info(annotations.describe())
        log.info(
            f"model: {human_count(params['total'])} parameters "
            f"({human_count(params['trainable'])} trainable; encoder "
            f"{human_count(params.get('encoder', 0))}, decoder {human_count(params.get('decoder', 0))})"
        )
    loggers = build_loggers(cfg)  # first: it fixes the W&B run id that checkpoints keep
    run_config = OmegaConf.to_container(cfg, resolve=True)
    overrides, choices = job_overrides()
    # In a sweep: report to the Optuna trial after each validation, stop when pruned.
    trial_reporter = reporter_for_this_job(str(cfg.monitor))
    # The guard comes first: its checks run before any checkpoint callback saves.
    callbacks = [
        FiniteGuard(),
        *build_callbacks(cfg, has_logger=bool(loggers)),
        RunConfigInCheckpoint(run_config, overrides, choices),
        RngState(),
        ValidateAfterLastEpoch(),
        TrimRepeatedRows(),
        *([trial_reporter] if trial_reporter else []),
    ]
    extra: dict[str, Any] = {}
    if "enable_model_summary" not in cfg.trainer:
        extra["enable_model_summary"] = False  # the one-line summary above replaces the table
    # Checkpoints are written to a temp file and renamed: a full disk never truncates best.ckpt.
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **extra,
    )
    for logger in loggers:
        logger.log_hyperparams({**run_config, "data_split": split_info, "model_params": params})
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
                pruned_at = trial_reporter.pruned_at_epoch if trial_reporter else None
                if cfg.get("test") and pruned_at is None:
                    # Without a checkpoint (fast_dev_run) the final weights are tested. The
                    # project's own table below replaces Lightning's.
                    trainer.test(
                        model,
                        datamodule=datamodule,
                        ckpt_path=best_path or None,
                        weights_only=True,
                        verbose=False,
                    )
                    if stop.signum is not None:
                        raise SIGTERMException()
                    test_scores = model.latest_scores.get("test", {})
                    metrics.update({f"test/{k}": v for k, v in test_scores.items()})
            except (SystemExit, KeyboardInterrupt) as err:
                raise interrupted(trainer, stop, output_dir) from err
            except RuntimeError as err:
                # A loader worker killed from outside: the checkpoint is saved as for Ctrl-C.
                signum = stop.signum or killed_worker_signal(err)
                if signum is None:
                    raise
                stop.signum = signum
                raise interrupted(trainer, stop, output_dir) from err
        metrics["best_checkpoint"] = best_path or None
        metrics["epochs"] = trainer.current_epoch
        if pruned_at is not None:
            metrics.update(trial_state="pruned", pruned_at_epoch=pruned_at)
            if trainer.is_global_zero:
                mark_pruned(output_dir, loggers, pruned_at)
        scored = model.latest_scores.get("test") or model.latest_scores.get("val")
        metrics.update(
            {
                **split_info,
                "beam_size": int(model.hparams.beam_size),
                "length_penalty": float(model.hparams.length_penalty),
                "max_len": int(model.hparams.max_len),
                "init_from": str(cfg.init_from) if cfg.get("init_from") else None,
                "scoring": scoring_info(scored),
                "model_params": params,
                "provenance": provenance(cfg.get("seed"), overrides, output_dir),
            }
        )
        timer = find_phase_timer(trainer)
        if timer is not None:  # the breakdown up to here (also in timings.json)
            metrics["timings"] = timer.finish()
        if trainer.is_global_zero:
            write_json(output_dir / "metrics.json", metrics)
            summary = {k: v for k, v in metrics.items() if k.startswith("test/")}
            summary.update(best_checkpoint=metrics["best_checkpoint"], model_params=params)
            if trial_reporter:
                summary.update(trial_summary(trial_reporter))
            log_run_summary(loggers, summary, [output_dir / "metrics.json"])
    finally:
        finish_loggers(loggers)

    test_scores = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("test/")}
    if test_scores and trainer.is_global_zero:
        log.info(format_scores(test_scores, f"test scores ({output_dir / 'metrics.json'}):"))
    return objective_value(cfg, metrics)


def objective_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value of ``optimized_metric`` (what a sweep optimises), as a float."""
    objective = cfg.get("optimized_metric")
    if not objective:
        return None
    value = metrics.get(objective)
    if value is None:
        available = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise ConfigError(
            f"optimized_metric={objective} was not computed by this run (it has: "
            f"{', '.join(available) or 'no scores'}); set monitor= to one of them"
        )
    return float(value)


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
    log.warning(message)
    return Interrupted(message, stop.exit_code)


# ---------------------------------------------------------------------------------- evaluate
def beam_sizes(value: Any, default: int) -> list[int]:
    """``beam_size=3`` or ``beam_size='[1,3,5]'`` -> a list of positive ints."""
    if value is None:
        value = default
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]
    try:
        sizes = [check_beam_size(v) for v in values]
    except ConfigError:
        sizes = []
    if not sizes:
        raise ConfigError(
            f"beam_size={value} must be a positive int or a list of them, e.g. beam_size='[1,3]'"
        )
    return sizes


def checkpoint_argument(cfg: DictConfig) -> str:
    """The checkpoint to evaluate: ``ckpt=`` or its other spelling ``ckpt_path=``, exactly one."""
    given = {k: cfg.get(k) for k in ("ckpt", "ckpt_path") if cfg.get(k) not in (None, "", "???")}
    if len(given) != 1:
        what = "both ckpt= and ckpt_path=" if given else "no checkpoint"
        raise ConfigError(
            f"evaluate.py got {what}: give one, e.g. ckpt=outputs/train/runs/<date>/<time>/"
            "checkpoints/best.ckpt (ckpt_path= is the same setting)"
        )
    return str(next(iter(given.values())))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score a checkpoint on a split with one or more beam sizes, in one pass over the encoder.

    Writes ``metrics.json`` (``<split>/<metric>`` for the first beam size, every beam size
    under ``by_beam_size``, and how the scores were made), ``predictions.json`` (image,
    hypothesis, references) and the COCO-format ``references_coco.json`` and
    ``results_coco.json`` (first beam size; ``results_coco_beam<k>.json`` for the others).
    """
    from tqdm.auto import tqdm

    from imgcap.api.captioner import Captioner
    from imgcap.api.coco import coco_references, coco_results

    output_dir = Path(cfg.paths.output_dir)
    split = cfg.split
    if split not in ("val", "test"):
        raise ConfigError(f"split={split!r} is not one of val, test")
    ckpt = checkpoint_argument(cfg)
    captioner = Captioner.from_checkpoint(ckpt, device=cfg.accelerator)
    model, run_config, device = captioner.model, captioner.run_config, captioner.device
    beams = beam_sizes(cfg.beam_size, default=model.hparams.beam_size)
    show_config(cfg)

    overrides = {k: v for k, v in (cfg.get("data") or {}).items() if v is not None}
    data_cfg = OmegaConf.merge(run_config["data"], overrides)
    data_cfg.cache_features = False  # one pass: the encoder runs on the images directly
    data_cfg.num_workers = cfg.num_workers
    data_cfg.persistent_workers = False
    data_cfg.quiet = bool(cfg.get("quiet", False))
    if cfg.batch_size:
        data_cfg.eval_batch_size = cfg.batch_size
    datamodule = instantiate(data_cfg, check_splits=[split])  # only the images scored
    datamodule.vocab = model.vocab
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    log.info(datamodule.annotations.describe())
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
                captions, _ = captioner.caption_features(features, beam_size=k, max_len=cfg.max_len)
                hypotheses[k].extend(captions)
            references.extend(batch["references"])
            image_ids.extend(batch["image_ids"])

    by_beam = {
        str(k): compute_caption_metrics(hypotheses[k], references, meteor=cfg.meteor) for k in beams
    }
    first = str(beams[0])
    metrics: dict[str, Any] = {f"{split}/{n}": v for n, v in by_beam[first].items()}
    metrics.update({"beam_size": beams[0], "by_beam_size": by_beam, "ckpt": ckpt})
    metrics.update(
        {
            "checkpoint": str(Path(ckpt).expanduser().resolve()),
            "split": split,
            **datamodule.annotations.split_info(),
            "num_images": len(image_ids),
            "length_penalty": float(model.hparams.length_penalty),
            "max_len": int(cfg.max_len or model.hparams.max_len),
            "scoring": scoring_info(by_beam[first]),
            "provenance": provenance(run_config.get("seed"), job_overrides()[0]),
        }
    )
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
    dataset_ids = datamodule.annotations.dataset_ids  # e.g. COCO's own ids
    write_json(
        output_dir / "references_coco.json",
        coco_references(image_ids, references, f"imgcap {split} references ({ckpt})", dataset_ids),
    )
    for k in beams:
        name = "results_coco.json" if k == beams[0] else f"results_coco_beam{k}.json"
        write_json(output_dir / name, coco_results(image_ids, hypotheses[k], dataset_ids))
    for k in beams:
        log.info(
            format_scores(
                by_beam[str(k)], f"{split} scores, beam size {k} ({len(image_ids)} images):"
            )
        )
    log.info(f"wrote metrics.json, predictions.json and the COCO files to {output_dir}")
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
    """Caption the user's own photos; optionally write attention overlays as PNGs.

    An unreadable image among several is skipped with one warning line; the rest are
    captioned. Overlays are drawn on the crop the model saw (see :class:`Captioner`).
    """
    from imgcap.api.captioner import Captioner, check_beam_size
    from imgcap.api.visualize import attention_overlay
    from imgcap.data.transforms import load_image
    from imgcap.errors import DataError

    output_dir = Path(cfg.paths.output_dir)
    beam = check_beam_size(cfg.beam_size)
    paths = collect_images(cfg.images)
    show_config(cfg)
    captioner = Captioner.from_checkpoint(cfg.ckpt, device=cfg.accelerator)

    loaded: list[tuple[Path, Any]] = []
    for path in paths:
        try:
            loaded.append((path, load_image(path)))
        except DataError as err:
            if len(paths) == 1:
                raise
            log.warning(f"warning: skipped: {err}")
    if not loaded:
        raise DataError(f"none of the {len(paths)} images could be read (see the warnings above)")

    results = []
    batch_size = int(cfg.get("batch_size") or 16)
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        captions = captioner(
            [image for _, image in chunk], beam_size=beam, max_len=cfg.max_len, attention=True
        )
        for (path, _), out in zip(chunk, captions, strict=True):
            record: dict[str, Any] = {"image": str(path), "caption": out.caption}
            if cfg.attention and out.words:
                png = output_dir / "attention" / f"{path.stem}.png"
                attention_overlay(out.image, out.words, out.attention.flatten(1), path=png)
                record["attention_png"] = str(png)
            log.info(f"{path}: {out.caption}")
            results.append(record)
    skipped = [str(p) for p in paths if str(p) not in {r["image"] for r in results}]
    write_json(output_dir / "captions.json", results)
    if skipped:
        write_json(output_dir / "skipped.json", skipped)
    return results
