"""End-to-end runs of train / evaluate / caption on a tiny generated dataset, in tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from PIL import Image

from imgcap.captioning_module import CaptioningModule, load_captioner
from imgcap.checkpoint import read_checkpoint
from imgcap.data import feature_stores as feature_stores_module
from imgcap.errors import CheckpointError, ConfigError, DataError, ImgcapError
from imgcap.metrics import compute_caption_metrics
from imgcap.run import tasks
from tests.support.hydra_helpers import compose_config, compose_train
from tests.support.runs import TINY
from tests.support.scripts import REPO


@pytest.fixture
def trained_run(tiny_run) -> Path:
    """Two epochs of training, once per session (tests/conftest.py); returns the run directory
    (with checkpoints and metrics.json)."""
    return tiny_run


def test_train_writes_checkpoints_metrics_and_samples(trained_run):
    assert (trained_run / "checkpoints" / "best.ckpt").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for name in ("BLEU-4", "CIDEr", "ROUGE-L"):
        assert 0.0 <= metrics[f"test/{name}"] <= 10.0
        assert f"val/{name}" in metrics
    assert "test/METEOR" not in metrics  # switched off in TINY
    assert metrics["best_checkpoint"].endswith("best.ckpt")
    assert list((trained_run / "samples").glob("epoch_*.json"))


def test_checkpoint_alone_rebuilds_the_model_on_cpu(trained_run):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    model = CaptioningModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    again, run_config = load_captioner(ckpt)
    assert run_config["data"]["image_size"] == 32
    assert model.vocab == again.vocab and len(model.vocab) > 10
    features = torch.randn(3, 4, again.encoder.out_dim)
    assert model.caption_features(features)[0] == again.caption_features(features)[0]


def test_evaluate_scores_equal_a_direct_metric_computation(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    cfg = compose_config(
        tmp_path, "evaluate", [f"ckpt={ckpt}", "beam_size=[1,3]", "num_workers=0", "meteor=false"]
    )
    metrics = tasks.evaluate(cfg)
    out = Path(cfg.paths.output_dir)
    written = json.loads((out / "metrics.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert len(predictions) == 6  # 10% of 60 images are the test split
    assert set(predictions[0]) >= {"image", "hypothesis", "references"}
    direct = compute_caption_metrics(
        [p["hypothesis"] for p in predictions], [p["references"] for p in predictions], meteor=False
    )
    for name, value in direct.items():
        assert written[f"test/{name}"] == pytest.approx(value, abs=1e-12)
    assert set(written["by_beam_size"]) == {"1", "3"}


def test_val_scores_of_training_equal_evaluate_on_val(trained_run, tmp_path):
    """The fast in-process validation scores (which pick the best checkpoint) are what
    evaluate.py split=val reports with pycocoevalcap for that checkpoint."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    cfg = compose_config(
        tmp_path, "evaluate", [f"ckpt={ckpt}", "split=val", "num_workers=0", "meteor=false"]
    )
    evaluated = tasks.evaluate(cfg)
    assert evaluated["scoring"]["scorer"] == "pycocoevalcap"
    assert metrics["val/BLEU-1"] > 0.0 and metrics["val/ROUGE-L"] > 0.0  # not trivially equal
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert evaluated[f"val/{name}"] == pytest.approx(metrics[f"val/{name}"], abs=1e-6), name


def test_caption_writes_attention_png(trained_run, tmp_path):
    images = sorted((trained_run.parent / "data" / "shapes" / "Images").glob("*.jpg"))[:2]
    cfg = compose_config(
        tmp_path,
        "caption",
        [
            f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}",
            f"images=[{images[0]},{images[1]}]",
            "attention=true",
        ],
    )
    results = tasks.caption(cfg)
    assert [r["image"] for r in results] == [str(p) for p in images]
    for r in results:
        if r["caption"]:
            png = Path(r["attention_png"])
            assert png.is_file() and Image.open(png).size[0] > 64


def test_caption_takes_a_folder(trained_run, tmp_path):
    folder = trained_run.parent / "data" / "shapes" / "Images"
    cfg = compose_config(
        tmp_path,
        "caption",
        [f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"images={folder}", "beam_size=1"],
    )
    results = tasks.caption(cfg)
    assert [r["image"] for r in results] == [str(p) for p in sorted(folder.glob("*.jpg"))]
    written = json.loads((Path(cfg.paths.output_dir) / "captions.json").read_text())
    assert written == results and "attention_png" not in written[0]


def test_caption_missing_image_is_one_clear_error(trained_run, tmp_path):
    cfg = compose_config(
        tmp_path,
        "caption",
        [f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", "images=[/nope/a.jpg]"],
    )
    with pytest.raises(ImgcapError, match="/nope/a.jpg"):
        tasks.caption(cfg)


def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, bogus)
    cfg = compose_config(tmp_path, "evaluate", [f"ckpt={bogus}"])
    with pytest.raises(CheckpointError, match="x.ckpt"):
        tasks.evaluate(cfg)


def test_fast_dev_run_trains_validates_and_tests(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "debug=fdr", "logger=none"])
    tasks.train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test/BLEU-4" in metrics and metrics["best_checkpoint"] is None


def test_missing_dataset_says_where_to_get_it(tmp_path):
    cfg = compose_train(tmp_path, ["model.encoder.weights=null", "logger=none"])
    with pytest.raises(DataError) as err:
        tasks.train(cfg)
    message = str(err.value)
    assert str(tmp_path / "data" / "flickr8k") in message and "experiment=demo" in message


def test_cached_features_need_a_frozen_encoder(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "data.cache_features=true", "logger=none"])
    with pytest.raises(ImgcapError, match="data.cache_features"):
        tasks.train(cfg)


def test_wandb_offline_run_holds_metrics_and_samples_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(tmp_path, [*TINY, "trainer.max_epochs=1", "logger=wandb", "test=false"])
    tasks.train(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # An offline run keeps its history in the binary run-*.wandb log (what `wandb sync` uploads).
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"val/BLEU-4", b"val/CIDEr", b"train/loss", b"attention_dim"):
        assert key in log, key
    tables = list((runs[0] / "files" / "media" / "table").rglob("samples*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["image", "picture", "prediction", "references"]
    assert len(table["data"]) == 6  # the whole validation split (6 of 60 images); the cap is 8
    images = runs[0] / "files" / "media" / "images"
    assert list(images.rglob("attention*.png"))
    assert len(list(images.rglob("sample_images*.png"))) == 6


@pytest.mark.slow
def test_multirun_writes_one_run_directory_per_job(tmp_path):
    sweep = tmp_path / "sweep-7f3a"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        *TINY,
        "trainer.max_epochs=1",
        "logger=wandb",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        "model.decoder.attention_dim=16,32",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["test/BLEU-4"] >= 0.0
        assert (job / ".hydra" / "overrides.yaml").is_file()
        # One W&B run per job, grouped by the sweep and named by the job's overrides.
        (run,) = (job / "wandb").glob("offline-run-*")
        log = next(run.glob("run-*.wandb")).read_bytes()
        assert b"sweep-7f3a" in log
        assert f"model.decoder.attention_dim={16 if job.name == '0' else 32}".encode() in log
        # Only the swept override names the run (the fixed ones are the same in every job).
        config = read_checkpoint(job / "checkpoints" / "best.ckpt")["imgcap"]["config"]
        wanted = f"model.decoder.attention_dim={16 if job.name == '0' else 32}"
        assert config["logger"]["wandb"]["name"] == wanted
        assert (job / "config_tree.log").is_file()
    assert done.stdout.count("\n├── data") == 1  # the config tree on the console once


@pytest.mark.slow
def test_one_command_sweeps_both_decoders(tmp_path):
    sweep = tmp_path / "decoders"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "experiment=demo",
        "model/decoder=lstm_attention,transformer",
        "trainer.max_epochs=1",
        "data.synthetic.num_images=300",
        "print_config=false",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    decoders = []
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["test/BLEU-4"] >= 0.0
        checkpoint = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
        decoders.append(checkpoint["hyper_parameters"]["decoder"]["name"])
    assert decoders == ["lstm_attention", "transformer"]


@pytest.mark.slow
def test_train_script_prints_one_line_for_a_missing_dataset(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"paths.root_dir={tmp_path}",
        "model.encoder.weights=null",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "experiment=demo" in errors[0]
    assert "Traceback" not in done.stderr


class InterruptAt(L.Callback):
    """Simulates Ctrl-C in the middle of an epoch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The run config (this callback included) travels in the checkpoint: a resumed run
        # must not be interrupted again.
        resumed = trainer.ckpt_path is not None
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and not resumed:
            raise KeyboardInterrupt


def test_interrupted_training_leaves_a_checkpoint_that_resumes(tmp_path):
    interrupt = [
        "+callbacks.interrupt._target_=tests.run.test_tasks.InterruptAt",
        "+callbacks.interrupt.epoch=1",
        "+callbacks.interrupt.batch=1",
    ]
    cfg = compose_train(tmp_path / "a", [*TINY, "trainer.max_epochs=3", "logger=none", *interrupt])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning saves, cleans up, then exits with status 1
            tasks.train(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C after the first
    saved = Path(cfg.paths.output_dir) / "checkpoints" / "on_exception.ckpt"
    assert saved.is_file()
    state = torch.load(saved, map_location="cpu", weights_only=False)
    assert (
        state["epoch"] == 1 and state["global_step"] == 3 + 1
    )  # 3 batches in epoch 0, 1 in epoch 1

    resumed = compose_train(
        tmp_path / "b", [*TINY, "trainer.max_epochs=3", "logger=none", f"ckpt_path={saved}"]
    )
    tasks.train(resumed)
    # ckpt_path= continues the run it came from, in its own directory.
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and "test/BLEU-4" in metrics


def test_predict_step_returns_captions_and_attention(trained_run):
    model, _ = load_captioner(trained_run / "checkpoints" / "best.ckpt")
    images = torch.randn(2, 3, 32, 32)
    out = model.predict_step({"images": images, "image_ids": ["x.jpg", "y.jpg"]}, 0)
    assert [o["image_id"] for o in out] == ["x.jpg", "y.jpg"]
    for o in out:
        assert o["words"] == o["caption"].split()
        assert o["alphas"].shape[1] == 4  # a 2x2 grid
        assert o["alphas"].shape[0] >= len(o["words"])


def test_bad_config_values_are_one_clear_error(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "model.encoder.arch=resnet9", "logger=none"])
    with pytest.raises(ConfigError, match="unknown encoder arch 'resnet9'"):
        tasks.train(cfg)
    cfg = compose_train(tmp_path, [*TINY, "data.bad_images=maybe", "logger=none"])
    with pytest.raises(ConfigError, match="data.bad_images"):
        tasks.train(cfg)


@pytest.mark.parametrize("value", [0, "three", []])
def test_bad_beam_sizes_are_rejected(value):
    with pytest.raises(ConfigError, match="beam_size"):
        tasks.beam_sizes(value, default=1)


def test_beam_sizes_accept_one_or_many():
    assert tasks.beam_sizes(None, default=3) == [3]
    assert tasks.beam_sizes([1, 5], default=3) == [1, 5]


def test_training_on_cached_features_never_runs_the_encoder_after_the_cache(tmp_path, monkeypatch):
    cfg = compose_train(
        tmp_path,
        [
            *TINY,
            "data.cache_features=true",
            "model.encoder.fine_tune=frozen",
            "trainer.max_epochs=2",
            "logger=none",
        ],
    )
    calls = []  # (trainer stage, whether the feature cache was being built)
    building = []
    original = tasks.build_data_and_model
    original_build = feature_stores_module.build_feature_cache

    def build_and_count(cfg):
        datamodule, model = original(cfg)
        model.encoder.register_forward_hook(
            lambda *args: calls.append((model.trainer.state.stage.value, bool(building)))
        )
        return datamodule, model

    def build_cache(*args, **kwargs):
        building.append(True)
        try:
            return original_build(*args, **kwargs)
        finally:
            building.pop()

    monkeypatch.setattr(tasks, "build_data_and_model", build_and_count)
    monkeypatch.setattr(feature_stores_module, "build_feature_cache", build_cache)
    tasks.train(cfg)
    # The caches are filled inside the Trainer's prepare_data hook (train + val when fitting,
    # test before testing); every training, validation and test step reads cached features.
    assert calls and all(in_build for _, in_build in calls), calls
    assert {stage for stage, _ in calls} == {"train", "test"}, calls
    # In the project's cache folder (paths.cache_dir), not in the dataset folder.
    assert len(list((tmp_path / ".cache" / "imgcap").glob("*.npy"))) == 3
    assert not (tmp_path / "data" / "shapes" / ".imgcap_cache").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test/BLEU-4" in metrics
