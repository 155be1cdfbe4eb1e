"""What the entry scripts run: ``train(cfg)``, ``evaluate(cfg)`` and ``caption(cfg)``.

Each takes a composed Hydra config (so tests call them in-process with ``compose``), writes its
results into ``cfg.paths.output_dir`` and returns them. Each reads as its recipe: check the
config, build the objects (:mod:`imgcap.run.builders`), run, report (:mod:`imgcap.run.report`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from omegaconf import DictConfig

from imgcap.metrics import compute_caption_metrics
from imgcap.run.arguments import (
    IMAGE_SUFFIXES,
    beam_sizes,
    checkpoint_argument,
    collect_images,
    evaluation_split,
)
from imgcap.run.builders import (
    build_callbacks,
    build_data_and_model,
    build_evaluation_data,
    build_trainer,
)
from imgcap.run.checks import check_train_config
from imgcap.run.cli import show_config
from imgcap.run.hardware import register_resolvers, use_tensor_cores_for_float32
from imgcap.run.loggers import build_loggers, finish_loggers, start_logging
from imgcap.run.report import (
    best_checkpoint,
    describe_run,
    evaluation_metrics,
    format_scores,
    objective_value,
    report_training,
    split_info,
    training_metrics,
    write_evaluation,
    write_json,
)
from imgcap.run.resume import record_resume, resume_config, stopping_cleanly
from imgcap.run.trial_reporter import reporter_for_this_job

log = logging.getLogger(__name__)
register_resolvers()

# Names the scripts and tests use from here (defined where their job is).
__all__ = [
    "IMAGE_SUFFIXES",
    "beam_sizes",
    "build_data_and_model",
    "caption",
    "checkpoint_argument",
    "collect_images",
    "evaluate",
    "format_scores",
    "objective_value",
    "train",
    "write_json",
]


# ---------------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> float | None:
    """Fit, then test the best checkpoint; write ``metrics.json``; return ``optimized_metric``.

    With ``ckpt_path=`` the run the checkpoint came from resumes, in its own directory and with
    its own config (see :mod:`imgcap.run.resume`); without it a fresh run starts, never a resume.
    Validation always runs after the last epoch (whatever ``check_val_every_n_epoch``), so every
    run that trains has a best checkpoint, samples and an objective for sweeps.
    """
    cfg = begin_training(cfg)
    datamodule, model = build_data_and_model(cfg)
    params = describe_run(datamodule, model)  # parameter counts at the start
    loggers = build_loggers(cfg)  # first: it fixes the W&B run id that checkpoints keep
    trial = reporter_for_this_job(str(cfg.monitor))  # in a sweep: report, stop when pruned
    trainer = build_trainer(cfg, build_callbacks(cfg, datamodule, loggers, trial), loggers)
    start_logging(loggers, cfg, model, split_info(datamodule), params)
    resume_from, output_dir = cfg.get("ckpt_path") or None, Path(cfg.paths.output_dir)
    try:
        with stopping_cleanly(trainer, output_dir, bool(resume_from)) as stop:
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
            stop.raise_if_signalled()
            tested = bool(cfg.get("test")) and (trial is None or trial.pruned_at_epoch is None)
            if tested:  # the best checkpoint; without one (fast_dev_run) the final weights
                trainer.test(
                    model,
                    datamodule=datamodule,
                    ckpt_path=best_checkpoint(trainer) or None,
                    weights_only=True,
                    verbose=False,  # the project's own table replaces Lightning's
                )
                stop.raise_if_signalled()
        metrics = training_metrics(cfg, trainer, model, datamodule, trial, tested, params)
        report_training(output_dir, trainer, loggers, metrics, trial)
    finally:
        finish_loggers(loggers)
    return objective_value(cfg, metrics)


def begin_training(cfg: DictConfig) -> DictConfig:
    """The config to train with (a resumed run's own), checked, recorded and shown; then the
    run directory, the seed and the float32 matmul precision."""
    if cfg.get("ckpt_path"):
        cfg = resume_config(cfg)  # reads the checkpoint safely: one line when it is bad
    check_train_config(cfg)
    if cfg.get("ckpt_path"):
        record_resume(cfg)  # .hydra/resumes.yaml: when, from which checkpoint, which overrides
    show_config(cfg)  # after the checks, the config actually used (a resumed run's own)
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    use_tensor_cores_for_float32()
    return cfg


# ---------------------------------------------------------------------------------- evaluate
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score a checkpoint on a split with one or more beam sizes, in one pass over the encoder.

    Writes ``metrics.json`` (``<split>/<metric>`` for the first beam size, every beam size
    under ``by_beam_size``, and how the scores were made), ``predictions.json`` (image,
    hypothesis, references) and the COCO-format ``references_coco.json`` and
    ``results_coco.json`` (first beam size; ``results_coco_beam<k>.json`` for the others).
    """
    from tqdm.auto import tqdm

    from imgcap.api.captioner import Captioner

    split = evaluation_split(cfg)
    ckpt = checkpoint_argument(cfg)
    captioner = Captioner.from_checkpoint(ckpt, device=cfg.accelerator)
    model, run_config = captioner.model, captioner.run_config
    beams = beam_sizes(cfg.beam_size, default=model.hparams.beam_size)
    show_config(cfg)
    datamodule = build_evaluation_data(cfg, run_config, model.vocab, split)
    log.info(datamodule.annotations.describe())
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    quiet = bool(cfg.get("quiet", False))
    batches = tqdm(loader, desc=f"evaluate {split}", unit="batch", disable=quiet)
    captions = captioner.caption_batches(batches, beams, max_len=cfg.max_len)
    by_beam = {
        str(k): compute_caption_metrics(
            captions.hypotheses[k], captions.references, meteor=cfg.meteor
        )
        for k in beams
    }
    metrics = evaluation_metrics(
        captions, by_beam, split, ckpt, datamodule, model, run_config, cfg.max_len
    )
    dataset_ids = datamodule.annotations.dataset_ids  # e.g. COCO's own ids
    write_evaluation(Path(cfg.paths.output_dir), metrics, captions, split, ckpt, dataset_ids)
    return metrics


# ---------------------------------------------------------------------------------- caption
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
