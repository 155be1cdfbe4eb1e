"""benchmarks/gpu_trial.py at a tiny size on the CPU: the whole trial runs, its JSON carries the
wall time and the phase breakdown, and run_all.py --gpu-trial-json passes them on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgcap.phase_timing import PHASES

REPO = Path(__file__).resolve().parents[2]
TINY_TRIAL = [
    "model.encoder.arch=small_cnn",
    "++model.encoder.width=32",
    "model.encoded_size=2",
    "data.image_size=32",
    "model.decoder.attention_dim=32",
    "model.decoder.embed_dim=32",
    "model.decoder.decoder_dim=32",
    "model.meteor=false",
    "model.beam_size=1",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.pin_memory=false",
    "callbacks.progress_bar=null",
    "callbacks.caption_samples=null",
    "print_config=false",
]


@pytest.mark.slow
def test_a_tiny_trial_on_the_cpu_reports_minutes_and_phases(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_trial.py"),
            "--images=12",
            "--epochs=1",
            "--trainer=cpu",
            f"--data-root={tmp_path / 'data'}",
            f"--work-dir={tmp_path / 'work'}",
            f"--out={out}",
            "--workers=1",
            "--",
            *TINY_TRIAL,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "time: start-up" in done.stdout and "time: test" in done.stdout  # echoed live
    result = json.loads((out / "gpu_trial.json").read_text())
    assert result["completed"] and not result["cut_off"]
    assert result["gpu_trial_minutes"] > 0 and result["epochs_done"] == 1
    assert set(result["gpu_trial_breakdown"]) == {*PHASES, "total_seconds"}
    assert result["gpu_trial_breakdown"]["cache build"] > 0
    assert result["test_scores"]["test/BLEU-1"] > 0
    assert (out / "metrics.json").is_file() and (out / "trial.log").is_file()

    # run_all.py's reader (its GPU sections are not run here)
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    carried = run_all.gpu_trial(str(out / "gpu_trial.json"))
    assert carried["gpu_trial_minutes"] == result["gpu_trial_minutes"]
    assert carried["gpu_trial_breakdown"] == result["gpu_trial_breakdown"]
    assert "not the full GPU trial" in carried["note"]
    unmeasured = run_all.gpu_trial(None)
    assert unmeasured["gpu_trial_minutes"] is None and "unmeasured" in unmeasured["note"]
