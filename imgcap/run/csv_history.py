"""A CSV logger that keeps a run's history across resumes.

Lightning's CSVLogger deletes ``metrics.csv`` when its folder already holds files (with a warning
naming its own source), so a resumed run would lose the rows of its first part. This one reads
the rows already there and appends; every save rewrites the file whole through a temporary file
(:mod:`imgcap.atomic`), also when new columns appear.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import lightning.pytorch as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from imgcap.atomic import write_text


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Called by the base class instead of deleting the file: keep its rows and columns.
        self._rows: list[dict[str, Any]] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                self._rows = list(reader)
                self.metrics_keys = sorted(reader.fieldnames or [])

    def drop_rows_after(self, step: int) -> None:
        """Forget rows logged after ``step`` (resuming from an earlier checkpoint repeats them)."""
        self._rows = [r for r in self._rows if _step(r) is None or _step(r) <= step]

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self._rows.extend(self.metrics)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        write_text(self.metrics_file_path, buffer.getvalue())
        self.metrics = []


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class HistoryCSVLogger(CSVLogger):
    """:class:`~lightning.pytorch.loggers.CSVLogger` that appends to an existing ``metrics.csv``
    (same arguments)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class TrimRepeatedRows(L.Callback):
    """On resume, forget the CSV rows logged after the checkpoint's step: training repeats those
    steps (resuming from ``last.ckpt`` after a later crash), and their rows would appear twice."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        for logger in trainer.loggers:
            if isinstance(logger, HistoryCSVLogger) and trainer.is_global_zero:
                logger.experiment.drop_rows_after(trainer.global_step)
