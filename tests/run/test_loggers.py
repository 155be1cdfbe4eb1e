"""What the loggers receive: W&B runs on cached features still show pictures and attention,
sweep runs are grouped and named without paths, credentials are wandb's call, and the
TensorBoard / many-logger options write their files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from imgcap.run import tasks
from imgcap.run.loggers import sweep_job
from tests.support.hydra_helpers import CONF_DIR, compose_train
from tests.support.runs import TINY


def test_wandb_run_on_cached_features_holds_pictures_and_overlays(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(
        tmp_path,
        [
            *TINY,
            "data.cache_features=true",
            "model.encoder.fine_tune=frozen",
            "trainer.max_epochs=1",
            "logger=wandb",
            "test=false",
        ],
    )
    tasks.train(cfg)
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    images = run / "files" / "media" / "images"
    # Read back from the offline run files: the 6 validation pictures and an overlay.
    assert len(list(images.rglob("sample_images*.png"))) == 6
    assert list(images.rglob("attention*.png"))
    log = next(run.glob("run-*.wandb")).read_bytes()
    for key in (b"model_params", b"best_checkpoint", b"split_source", b"val/sample_images"):
        assert key in log, key
    # metrics.json travels with the run.
    saved = run / "files" / "metrics.json"
    assert saved.is_file()
    assert json.loads(saved.read_text())["best_checkpoint"].endswith("best.ckpt")


def test_sweep_runs_are_grouped_by_time_and_experiment_and_named_without_paths(tmp_path):
    sweep_dir = tmp_path / "multiruns" / "2026-01-31" / "12-00-00"
    overrides = [
        "experiment=demo",
        f"data.root={tmp_path}/data",
        "model.decoder.attention_dim=64",
        "trainer.max_epochs=1",
        "hydra.mode=MULTIRUN",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    compose_train(tmp_path, overrides)
    group, name = sweep_job()
    assert group == "2026-01-31_12-00-00_demo"
    assert name == "model.decoder.attention_dim=64,trainer.max_epochs=1"
    assert str(tmp_path) not in name
    # With a sweeper that lists its parameters (Optuna), only those name the run.
    pytest.importorskip("hydra_plugins.imgcap_sweeper")
    compose_train(tmp_path, [*overrides, "hparams_search=optuna"])
    assert sweep_job()[1] == "model.decoder.attention_dim=64"


def test_override_dirname_excludes_paths():
    text = (CONF_DIR / "hydra" / "default.yaml").read_text()
    for key in ("paths.root_dir", "data.root", "ckpt_path"):
        assert f"- {key}" in text


CREDENTIALS_PROBE = """
import os, sys
from imgcap.run.loggers import configure_wandb_environment
print("MODE=" + ("offline" if configure_wandb_environment() else "online"))
"""

RUN_PROBE = """
import sys
from pathlib import Path
from omegaconf import OmegaConf
from imgcap.run.loggers import build_loggers
cfg = OmegaConf.create({"logger": {"wandb": {
    "_target_": "lightning.pytorch.loggers.WandbLogger", "project": "p", "save_dir": sys.argv[1],
}}})
(logger,) = build_loggers(cfg)
print("RUN_MODE=" + logger.experiment.settings.mode)
logger.experiment.finish()
"""


def probe_env(home: Path, case: str) -> dict[str, str]:
    """An environment without W&B variables, HOME in tmp, plus the credentials of ``case``."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), PYTHONPATH=str(CONF_DIR.parent), WANDB_CONFIG_DIR=str(home))
    if case == "netrc-self-hosted":
        # A self-hosted server: credentials in .netrc for its host, no WANDB_API_KEY.
        (home / ".netrc").write_text(
            f"machine wandb.example.org\n  login user\n  password {'a' * 40}\n"
        )
        (home / ".netrc").chmod(0o600)
        env["WANDB_BASE_URL"] = "https://wandb.example.org"
    elif case == "api-key":
        env["WANDB_API_KEY"] = "b" * 40
    return env


@pytest.mark.parametrize("case", ["none", "netrc-self-hosted", "api-key"])
def test_wandb_decides_about_credentials(tmp_path, case):
    pytest.importorskip("wandb")
    done = subprocess.run(
        [sys.executable, "-c", CREDENTIALS_PROBE],
        env=probe_env(tmp_path / "home", case),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert ("MODE=offline" in done.stdout) == (case == "none"), done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if "offline" in line]
    assert len(lines) == (1 if case == "none" else 0), done.stderr


@pytest.mark.slow
def test_without_credentials_the_run_really_starts_offline(tmp_path):
    """wandb reads WANDB_MODE once per process: the run must still start offline, not fail
    with "No API key configured" (or prompt)."""
    pytest.importorskip("wandb")
    done = subprocess.run(
        [sys.executable, "-c", RUN_PROBE, str(tmp_path)],
        env={**probe_env(tmp_path / "home", "none"), "WANDB_SILENT": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "RUN_MODE=offline" in done.stdout
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "W&B: no credentials found (WANDB_API_KEY, `wandb login`, .netrc): logging offline "
        "into the run directory; upload later with `wandb sync`"
    ]


def test_tensorboard_and_csv_loggers_write_their_files(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = compose_train(
        tmp_path, [*TINY, "trainer.max_epochs=1", "test=false", "logger=tensorboard"]
    )
    with open_dict(cfg):
        cfg.logger.csv = compose_train(tmp_path, ["logger=csv"]).logger.csv
    tasks.train(cfg)
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()


def test_many_loggers_compose(tmp_path):
    cfg = compose_train(tmp_path, ["logger=many"])
    assert set(cfg.logger) == {"wandb", "csv", "tensorboard"}
