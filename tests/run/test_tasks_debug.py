"""The debug configs run: a slice of the data, and a profiled epoch."""

from __future__ import annotations

import json
from pathlib import Path

from imgcap.run import tasks
from tests.support.hydra_helpers import compose_train
from tests.support.runs import TINY


def test_debug_limit_runs_a_slice_and_debug_profiler_writes_its_report(tmp_path):
    cfg = compose_train(
        tmp_path / "limit",
        [
            *TINY,
            "debug=limit",
            "trainer.limit_train_batches=2",
            "trainer.max_epochs=1",
            "logger=none",
            "test=false",
        ],
    )
    tasks.train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and "val/BLEU-4" in metrics
    assert cfg.trainer.limit_val_batches == 3

    cfg = compose_train(tmp_path / "profiler", [*TINY, "debug=profiler", "logger=none"])
    tasks.train(cfg)
    reports = list(Path(cfg.paths.output_dir).glob("*profiler*.txt"))
    assert reports and "run_training_epoch" in reports[0].read_text()
    # the names the README and conf/debug/profiler.yaml give
    assert "fit-profiler.txt" in {p.name for p in reports}
