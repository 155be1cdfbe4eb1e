"""What a sweep leaves in its directory: ``optimization_results.yaml``, ``trials.csv`` and plots.

Every file is written through a temp file and renamed into place, and rewritten after each
trial, so they can be read while the sweep runs.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from imgcap.run.trial_link import ATTR_EPOCHS, ATTR_EPOCHS_RUN, ATTR_PRUNED_AT, ATTR_RUN_DIR

log = logging.getLogger(__name__)

TRIAL_COLUMNS = (
    "number",
    "state",
    "value",
    "epochs",
    "epochs_run",
    "pruned_at_epoch",
    "duration_s",
    "retry_of",
    "run_dir",
)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def trial_state(trial: optuna.trial.FrozenTrial) -> str:
    """``complete``, ``pruned``, ``failed``, ``interrupted`` (failed, then retried),
    ``running`` or ``waiting``."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"):
        return "interrupted"
    return {TrialState.FAIL: "failed"}.get(trial.state, trial.state.name.lower())


def trial_rows(study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per trial: the fixed columns, then one column per parameter."""
    trials = study.get_trials(deepcopy=False)
    param_names = sorted({name for t in trials for name in t.params})
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        row: dict[str, Any] = {
            "number": t.number,
            "state": trial_state(t),
            "value": t.value if t.values is not None and len(t.values) == 1 else t.values,
            "epochs": t.user_attrs.get(ATTR_EPOCHS),
            "epochs_run": t.user_attrs.get(ATTR_EPOCHS_RUN),
            "pruned_at_epoch": t.user_attrs.get(ATTR_PRUNED_AT),
            "duration_s": round(duration, 1) if duration is not None else None,
            "retry_of": t.user_attrs.get("retry_of"),
            "run_dir": t.user_attrs.get(ATTR_RUN_DIR),
        }
        row.update({name: t.params.get(name) for name in param_names})
        rows.append(row)
    return [*TRIAL_COLUMNS, *param_names], rows


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    columns, rows = trial_rows(study)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    _write_text(path, buffer.getvalue())


def best_summary(study: optuna.Study, storage_url: str) -> dict[str, Any]:
    """The best trial's parameters, value, run directory and best checkpoint."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        state = trial_state(t)
        counts[state] = counts.get(state, 0) + 1
    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "storage": storage_url,
        "direction": study.direction.name.lower(),
        "trials": counts,
    }
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        summary.update(best_params=None, best_value=None)
        return summary
    run_dir = best.user_attrs.get(ATTR_RUN_DIR)
    checkpoint = Path(run_dir) / "checkpoints" / "best.ckpt" if run_dir else None
    summary.update(
        best_trial=best.number,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_run_dir=run_dir,
        best_checkpoint=str(checkpoint) if checkpoint and checkpoint.is_file() else None,
    )
    return summary


def write_results(study: optuna.Study, sweep_dir: Path, storage_url: str) -> dict[str, Any]:
    """``optimization_results.yaml`` and ``trials.csv`` in ``sweep_dir``."""
    summary = best_summary(study, storage_url)
    _write_text(sweep_dir / "optimization_results.yaml", yaml.safe_dump(summary, sort_keys=False))
    write_trials_csv(study, sweep_dir / "trials.csv")
    return summary


PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "intermediate_values": "plot_intermediate_values",
}


def write_plots(study: optuna.Study, sweep_dir: Path) -> list[Path]:
    """PNG plots with matplotlib (and HTML ones where plotly is installed). A plot that cannot
    be drawn yet (no parameter varies, one trial only) is skipped with a debug line."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import is_available as plotly_available
    from optuna.visualization import matplotlib as mpl_plots

    written = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    folder = sweep_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    for name, function in PLOTS.items():
        if name == "param_importances" and (len(complete) < 2 or not complete[0].params):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
            try:
                axes = getattr(mpl_plots, function)(study)
                figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                figure.set_size_inches(8, 5)
                figure.tight_layout()
                path = folder / f"{name}.png"
                tmp = folder / f".{name}.{os.getpid()}.png"
                figure.savefig(tmp, dpi=100)
                os.replace(tmp, path)
                plt.close(figure)
                written.append(path)
            except Exception as err:  # noqa: BLE001 - not drawable yet: no plot, no failure
                log.debug("plot %s skipped: %s", name, err)
            if plotly_available():
                try:
                    import optuna.visualization as plotly_plots

                    html = getattr(plotly_plots, function)(study).to_html(include_plotlyjs="cdn")
                    _write_text(folder / f"{name}.html", html)
                    written.append(folder / f"{name}.html")
                except Exception as err:  # noqa: BLE001
                    log.debug("html plot %s skipped: %s", name, err)
    return written
