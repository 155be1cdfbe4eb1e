"""What a run reports when it ends: ``metrics.json`` (scores, how they were made, provenance,
timings), the other result files of ``evaluate.py``, the W&B summary, and the score tables
printed to the terminal.

The tasks (:mod:`imgcap.run.tasks`) run the work; this module turns what it left behind (the
trainer, the module's scores, the captions) into the files and summaries a user reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from imgcap import atomic
from imgcap.errors import ConfigError
from imgcap.metrics import scoring_info
from imgcap.phase_timing import find_phase_timer
from imgcap.run.loggers import human_count, log_run_summary, parameter_counts
from imgcap.run.provenance import provenance
from imgcap.run.resume import job_overrides
from imgcap.run.trial_reporter import TrialReporter, mark_pruned, trial_summary

if TYPE_CHECKING:
    import lightning.pytorch as L

    from imgcap.api.captioner import SplitCaptions

log = logging.getLogger(__name__)

METRIC_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def write_json(path: Path, payload: Any) -> None:
    """Write JSON through a temp file + rename: a crash never leaves half a file."""
    atomic.write_json(path, payload)


def format_scores(scores: dict[str, float], title: str) -> str:
    """A small aligned table of metric values for the terminal."""
    names = [n for n in METRIC_ORDER if n in scores] + sorted(set(scores) - set(METRIC_ORDER))
    width = max(len(n) for n in names) if names else 0
    lines = [title] + [f"  {n:<{width}}  {scores[n]:.4f}" for n in names]
    return "\n".join(lines)


def describe_run(datamodule: Any, model: Any) -> dict[str, int]:
    """The data split and the model's size, in a few lines (rank zero only); returns the
    parameter counts as they are at the start (the encoder may unfreeze later)."""
    from imgcap.run.cli import is_rank_zero

    params = parameter_counts(model)
    if not is_rank_zero():
        return params
    annotations = getattr(datamodule, "annotations", None)
    if annotations is not None:
        log.info(annotations.describe())
    log.info(
        f"model: {human_count(params['total'])} parameters "
        f"({human_count(params['trainable'])} trainable; encoder "
        f"{human_count(params.get('encoder', 0))}, decoder {human_count(params.get('decoder', 0))})"
    )
    return params


def split_info(datamodule: Any) -> dict[str, Any]:
    annotations = getattr(datamodule, "annotations", None)
    return annotations.split_info() if annotations is not None else {}


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


# ---------------------------------------------------------------------------------- train
def best_checkpoint(trainer: L.Trainer) -> str:
    """The best checkpoint's path ("" without one, e.g. fast_dev_run)."""
    return trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""


def training_metrics(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: Any,
    datamodule: Any,
    trial: TrialReporter | None,
    tested: bool,
    model_params: dict[str, int],
) -> dict[str, Any]:
    """``metrics.json`` of a training run: the best epoch's validation scores, the test scores
    (when ``tested``), the best checkpoint, how the scores were made (decoding, scoring), the
    model's size at the start (``model_params``), the data split, provenance and the time per
    phase."""
    metrics: dict[str, Any] = dict(model.best_val_scores)
    test_scores = model.latest_scores.get("test", {}) if tested else {}
    metrics.update({f"test/{k}": v for k, v in test_scores.items()})
    metrics["best_checkpoint"] = best_checkpoint(trainer) or None
    metrics["epochs"] = trainer.current_epoch
    pruned_at = trial.pruned_at_epoch if trial else None
    if pruned_at is not None:
        metrics.update(trial_state="pruned", pruned_at_epoch=pruned_at)
    scored = model.latest_scores.get("test") or model.latest_scores.get("val")
    metrics.update(
        {
            **split_info(datamodule),
            "beam_size": int(model.hparams.beam_size),
            "length_penalty": float(model.hparams.length_penalty),
            "max_len": int(model.hparams.max_len),
            "init_from": str(cfg.init_from) if cfg.get("init_from") else None,
            "scoring": scoring_info(scored),
            "model_params": model_params,
            "provenance": provenance(
                cfg.get("seed"), job_overrides()[0], Path(cfg.paths.output_dir)
            ),
        }
    )
    timer = find_phase_timer(trainer)
    if timer is not None:  # the breakdown up to here (also in timings.json)
        metrics["timings"] = timer.finish()
    return metrics


def report_training(
    output_dir: Path,
    trainer: L.Trainer,
    loggers: list[Any],
    metrics: dict[str, Any],
    trial: TrialReporter | None,
) -> None:
    """On global rank zero: ``metrics.json`` in ``output_dir``, a pruned run's mark, the W&B
    summary (test scores, best checkpoint, model size, the sweep trial) and the test score
    table."""
    if not trainer.is_global_zero:
        return
    if metrics.get("pruned_at_epoch") is not None:
        mark_pruned(output_dir, loggers, metrics["pruned_at_epoch"])
    path = output_dir / "metrics.json"
    write_json(path, metrics)
    summary = {k: v for k, v in metrics.items() if k.startswith("test/")}
    summary.update(best_checkpoint=metrics["best_checkpoint"], model_params=metrics["model_params"])
    if trial:
        summary.update(trial_summary(trial))
    log_run_summary(loggers, summary, [path])
    test_scores = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("test/")}
    if test_scores:
        log.info(format_scores(test_scores, f"test scores ({path}):"))


# ---------------------------------------------------------------------------------- evaluate
def evaluation_metrics(
    captions: SplitCaptions,
    by_beam: dict[str, dict[str, float]],
    split: str,
    ckpt: str,
    datamodule: Any,
    model: Any,
    run_config: dict[str, Any],
    max_len: int | None,
) -> dict[str, Any]:
    """``metrics.json`` of ``evaluate.py``: ``<split>/<metric>`` for the first beam size, every
    beam size under ``by_beam_size``, and how the scores were made."""
    first = str(captions.beam_sizes[0])
    metrics: dict[str, Any] = {f"{split}/{n}": v for n, v in by_beam[first].items()}
    metrics.update({"beam_size": captions.beam_sizes[0], "by_beam_size": by_beam, "ckpt": ckpt})
    metrics.update(
        {
            "checkpoint": str(Path(ckpt).expanduser().resolve()),
            "split": split,
            **split_info(datamodule),
            "num_images": len(captions.image_ids),
            "length_penalty": float(model.hparams.length_penalty),
            "max_len": int(max_len or model.hparams.max_len),
            "scoring": scoring_info(by_beam[first]),
            "provenance": provenance(run_config.get("seed"), job_overrides()[0]),
        }
    )
    return metrics


def write_evaluation(
    output_dir: Path,
    metrics: dict[str, Any],
    captions: SplitCaptions,
    split: str,
    ckpt: str,
    dataset_ids: dict[str, Any] | None,
) -> None:
    """``metrics.json``, ``predictions.json`` (image, hypothesis, references) and the COCO-format
    ``references_coco.json`` and ``results_coco.json`` (first beam size;
    ``results_coco_beam<k>.json`` for the others); then the score tables."""
    from imgcap.api.coco import coco_references, coco_results

    beams = captions.beam_sizes
    predictions = [
        {
            "image": image_id,
            "hypothesis": captions.hypotheses[beams[0]][i],
            "references": captions.references[i],
            **(
                {"hypotheses_by_beam_size": {str(k): captions.hypotheses[k][i] for k in beams}}
                if len(beams) > 1
                else {}
            ),
        }
        for i, image_id in enumerate(captions.image_ids)
    ]
    write_json(output_dir / "metrics.json", metrics)
    write_json(output_dir / "predictions.json", predictions)
    write_json(
        output_dir / "references_coco.json",
        coco_references(
            captions.image_ids,
            captions.references,
            f"imgcap {split} references ({ckpt})",
            dataset_ids,
        ),
    )
    for k in beams:
        name = "results_coco.json" if k == beams[0] else f"results_coco_beam{k}.json"
        write_json(
            output_dir / name, coco_results(captions.image_ids, captions.hypotheses[k], dataset_ids)
        )
    for k in beams:
        log.info(
            format_scores(
                metrics["by_beam_size"][str(k)],
                f"{split} scores, beam size {k} ({len(captions.image_ids)} images):",
            )
        )
    log.info(f"wrote metrics.json, predictions.json and the COCO files to {output_dir}")
