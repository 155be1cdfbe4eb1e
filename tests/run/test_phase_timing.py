"""The phase timer: a cursor over the wall time whose phases add up, and a tiny real run that
reports every phase as it ends, in timings.json and metrics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from imgcap import phase_timing
from imgcap.phase_timing import PHASES, PhaseTimer, timed_phase
from imgcap.run import tasks
from tests.support.hydra_helpers import compose_train
from tests.support.runs import TINY


class FakeClock:
    """Stands in for the ``time`` module: ``perf_counter`` moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return 1e9 + self.now


def test_phases_add_up_and_nested_work_is_carved_out(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(phase_timing, "time", clock)
    monkeypatch.setattr(phase_timing, "process_start_time", lambda: 1e9 + 90.0)  # 10 s ago
    monkeypatch.setattr(phase_timing, "_last_finish", None)
    timer = PhaseTimer()
    clock.now += 5
    with timed_phase("cache build", "train"):
        clock.now += 7
    clock.now += 1
    timer.switch("training")
    clock.now += 20
    timer.switch("validation decoding")
    clock.now += 3
    timer.switch("validation scoring")
    clock.now += 0.5
    timer.switch("training")
    clock.now += 2
    done = timer.finish()
    assert done["seconds"] == {
        **dict.fromkeys(PHASES, 0.0),
        "start-up": 16.0,  # 10 s before the timer existed + 5 + 1, the cache build excluded
        "cache build": 7.0,
        "training": 22.0,
        "validation decoding": 3.0,
        "validation scoring": 0.5,
    }
    assert done["total_seconds"] == pytest.approx(sum(done["seconds"].values()))

    # Finished: later work (an evaluation in the same process) is no longer counted by it.
    with timed_phase("cache build"):
        clock.now += 4
    assert timer.breakdown()["seconds"]["cache build"] == 7.0
    # The next run in this process (a sweep's next trial) starts where this one finished.
    clock.now += 3
    second = PhaseTimer()
    clock.now += 1
    assert second.finish()["seconds"]["start-up"] == 8.0


def test_timed_phase_without_a_timer_does_nothing(monkeypatch) -> None:
    monkeypatch.setattr(phase_timing, "_active", None)
    with timed_phase("cache build"):
        pass  # no timer: no error, nothing recorded anywhere


def test_a_tiny_cached_run_reports_every_phase_as_it_ends(tmp_path: Path, caplog) -> None:
    cfg = compose_train(
        tmp_path,
        [
            *TINY,
            "data.cache_features=true",
            "model.encoder.fine_tune=frozen",
            "trainer.max_epochs=2",
            "trainer.num_sanity_val_steps=1",
            "logger=none",
        ],
    )
    with caplog.at_level(logging.INFO, logger="imgcap.phase_timing"):
        tasks.train(cfg)
    run = tmp_path / "run"
    written = json.loads((run / "timings.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["timings"] == written
    seconds = written["seconds"]
    assert set(seconds) == set(PHASES)
    for phase in (
        "start-up",
        "cache build",
        "training",
        "validation decoding",
        "validation scoring",
        "test",
    ):
        assert seconds[phase] > 0, phase
    assert written["total_seconds"] == pytest.approx(sum(seconds.values()), abs=0.02)
    assert written["epochs"] == 2 and written["validations"] == 2  # the sanity check apart

    lines = [r.getMessage() for r in caplog.records if r.name == "imgcap.phase_timing"]
    expected = [  # in the order the phases end
        "time: cache build (train)",
        "time: cache build (val)",
        "time: start-up",
        "time: sanity check decoding",
        "time: training epoch 0",  # as its validation starts
        "time: validation 1 decoding",
        "time: training epoch 1",
        "time: validation 2 decoding",
        "time: fit (2 epochs): training",
        "time: cache build (test)",
        "time: test",
        "time: total",
    ]
    found = [next(i for i, line in enumerate(lines) if line.startswith(e)) for e in expected]
    assert found == sorted(found), lines
