"""Reliability and security: safe checkpoints, divergence caught, errors never masked, signals
that stop with a resumable checkpoint and a non-zero status, exact resume, run directories that
cannot collide."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from imgcap.decoders.decoding import decode
from imgcap.decoders.lstm_attention import AttentionLSTMDecoder
from imgcap.errors import CheckpointError, ConfigError, DataError, DivergenceError
from imgcap.metrics import CaptionMetric
from imgcap.run import tasks
from imgcap.run.cli import one_line, unique_dir
from tests.support.callbacks import signal_at
from tests.support.hydra_helpers import compose_config, compose_train
from tests.support.runs import EXACT, TINY, run_metrics
from tests.support.scripts import ENV, REPO, error_lines, run_script


# ---------------------------------------------------------------------------- test callbacks
class KillLoaderWorkerAt(L.Callback):
    """SIGTERM to this process's DataLoader worker processes (not to the process itself) at a
    training batch, as a job scheduler or an administrator might."""

    def __init__(self, batch: int = 1) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx != self.batch or trainer.current_epoch != 0:
            return
        me = str(os.getpid())
        workers = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:  # the parent pid: a worker this run forked
                workers.append(int(stat.parent.name))
        assert workers, "no loader worker to kill"
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        time.sleep(3)  # PyTorch's SIGCHLD handler raises in this process meanwhile


class FailInValidation(L.Callback):
    """An image that fails to decode in the middle of validation."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if batch_idx == 1:
            raise DataError("cannot read image broken.jpg (broken data stream)")


# ---------------------------------------------------------------------------- checkpoints
class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def malicious_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "downloaded.ckpt"
    torch.save({"imgcap": {"format": 1}, "hyper_parameters": Payload(marker)}, path)
    return path, marker


def test_malicious_checkpoint_runs_nothing_anywhere(malicious_ckpt, tmp_path):
    path, marker = malicious_ckpt
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    configs = [
        compose_config(tmp_path / "e", "evaluate", [f"ckpt={path}"]),
        compose_config(tmp_path / "c", "caption", [f"ckpt={path}", f"images=[{image}]"]),
        compose_train(tmp_path / "t", [*TINY, "logger=none", f"ckpt_path={path}"]),
    ]
    for task, cfg in zip((tasks.evaluate, tasks.caption, tasks.train), configs, strict=True):
        with pytest.raises(CheckpointError) as err:
            task(cfg)
        message = one_line(err.value)
        assert "\n" not in str(err.value) and str(path) in message
        assert "refusing" in message and "posix.system" in message
        assert not marker.exists()


@pytest.mark.slow
def test_malicious_checkpoint_in_the_scripts_is_one_line(malicious_ckpt, tmp_path):
    path, marker = malicious_ckpt
    args = [str(REPO / "evaluate.py"), f"ckpt={path}", f"paths.root_dir={tmp_path}"]
    done = run_script(args, tmp_path, timeout=300)
    assert done.returncode == 2 and len(error_lines(done.stderr)) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign"])
def test_train_ckpt_path_bad_file_is_one_line(kind, tmp_path):
    path = tmp_path / "x.ckpt"
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    cfg = compose_train(tmp_path, [*TINY, "logger=none", f"ckpt_path={path}"])
    with pytest.raises(CheckpointError) as err:
        tasks.train(cfg)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before any work


# ---------------------------------------------------------------------------- divergence
def test_divergence_stops_with_one_line_and_saves_nothing_non_finite(tmp_path):
    cfg = compose_train(
        tmp_path,
        [
            *TINY,
            "trainer.max_epochs=3",
            "logger=none",
            # On this tiny set 1e12 stays finite for 3 epochs; the demo case is the slow test.
            "model.optimizer.lr=1e20",
            "model.encoder.lr=1e20",
            "trainer.gradient_clip_val=null",
        ],
    )
    with pytest.raises(DivergenceError) as err:
        tasks.train(cfg)
    message = str(err.value)
    assert "\n" not in message and "epoch" in message and "step" in message
    assert not (tmp_path / "run" / "metrics.json").exists()
    for ckpt in (tmp_path / "run").rglob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


@pytest.mark.slow
def test_divergence_exits_non_zero_from_the_script(tmp_path):
    done = run_script(
        [  # the demo with lr=1e12 (NaN at step 19) is in benchmarks/RELIABILITY.md
            str(REPO / "train.py"),
            *TINY,
            "trainer.max_epochs=2",
            "logger=none",
            "model.optimizer.lr=1e20",
            "model.encoder.lr=1e20",
            f"paths.root_dir={tmp_path}",
        ],
        tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and "diverged" in errors[0] and "Traceback" not in done.stderr
    for ckpt in (tmp_path / "outputs").rglob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


def test_decoding_a_degenerate_model_gives_empty_captions():
    decoder = AttentionLSTMDecoder(vocab_size=12, encoder_dim=8, embed_dim=8, decoder_dim=8)
    with torch.no_grad():
        for p in decoder.parameters():
            p.fill_(float("nan"))
    features = torch.randn(3, 4, 8)
    for beam in (1, 3):
        result = decode(decoder.eval(), features, beam_size=beam, max_len=5)
        assert len(result.tokens) == 3


# ---------------------------------------------------------------------------- masked errors
def test_caption_metric_is_hashable_with_states():
    metric = CaptionMetric(meteor=False)
    metric.update(["a dog"], [["a dog runs", "a dog"]], ["x.jpg"])
    assert hash(metric) == hash(metric)
    assert len({metric, CaptionMetric(meteor=False)}) == 2


def test_error_during_validation_reaches_the_user_unmasked(tmp_path):
    cfg = compose_train(
        tmp_path,
        [
            *TINY,
            "trainer.max_epochs=1",
            "logger=none",
            "data.eval_batch_size=2",
            "+callbacks.fail._target_=tests.run.test_reliability.FailInValidation",
        ],
    )
    with pytest.raises(DataError, match="broken.jpg"):
        tasks.train(cfg)


# ---------------------------------------------------------------------------- signals
@pytest.mark.slow
def test_sigterm_to_train_script_exits_143_and_resumes_from_ckpt_path_alone(tmp_path):
    # During validation, the harder case; mid-epoch and SIGINT stops are covered in-process
    # by the exact-resume test below.
    stage, signum, status = "val", signal.SIGTERM, 143
    run_dir = tmp_path / "outputs" / "the-run"
    first = run_script(
        [
            str(REPO / "train.py"),
            *TINY,
            "trainer.max_epochs=2",
            "logger=csv",
            "data.eval_batch_size=2",
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={run_dir}",
            *signal_at(stage, 1, 1, signum),
        ],
        tmp_path,
    )
    assert first.returncode == status, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    saved = run_dir / "checkpoints" / "on_exception.ckpt"
    hint = [line for line in first.stderr.splitlines() if "Resume with:" in line]
    assert len(hint) == 1 and f"ckpt_path={saved}" in hint[0]
    assert not (run_dir / "metrics.json").exists()
    torch.load(saved, map_location="cpu", weights_only=True)  # plain values only

    # A fresh process, from another folder, with nothing but the checkpoint.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = run_script([str(REPO / "train.py"), f"ckpt_path={saved}"], elsewhere)
    assert second.returncode == 0, second.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and "test/BLEU-4" in metrics
    assert not (elsewhere / "outputs").exists()  # no second run directory


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds workers via /proc")
def test_loader_worker_killed_from_outside_stops_like_ctrl_c(tmp_path, caplog):
    cfg = compose_train(
        tmp_path,
        [
            *TINY,
            "trainer.max_epochs=2",
            "logger=none",
            "data.num_workers=1",
            "data.preload=false",
            "+callbacks.kill._target_=tests.run.test_reliability.KillLoaderWorkerAt",
        ],
    )
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stopped:
        tasks.train(cfg)
    assert stopped.value.code == 143
    saved = Path(cfg.paths.output_dir) / "checkpoints" / "on_exception.ckpt"
    # The line goes through logging (stderr and train.log in the scripts).
    lines = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert len(lines) == 1 and "SIGTERM" in lines[0], lines
    assert f"Resume with: python train.py ckpt_path={saved}" in lines[0]
    torch.load(saved, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- exact resume
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg = compose_train(tmp, EXACT)
    tasks.train(cfg)
    return run_metrics(Path(cfg.paths.output_dir))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "epoch", "batch", "signum"),
    [
        ("train", 1, 1, signal.SIGTERM),  # mid-epoch
        ("val", 1, 1, signal.SIGINT),  # Ctrl-C during validation
    ],
)
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(
    uninterrupted, stage, epoch, batch, signum, tmp_path
):
    cfg = compose_train(tmp_path / "first", [*EXACT, *signal_at(stage, epoch, batch, signum)])
    with pytest.raises(SystemExit) as stopped:
        tasks.train(cfg)
    assert stopped.value.code == 128 + signum
    saved = Path(cfg.paths.output_dir) / "checkpoints" / "on_exception.ckpt"
    state = torch.load(saved, map_location="cpu", weights_only=True)
    assert state["epoch"] == epoch
    resumed = compose_train(tmp_path / "second", [f"ckpt_path={saved}"])
    tasks.train(resumed)
    metrics, weights = run_metrics(Path(cfg.paths.output_dir))
    assert metrics == uninterrupted[0]  # every score, to the last digit
    assert weights == uninterrupted[1]  # and the same final weights, bit for bit


# ---------------------------------------------------------------------------- run directories
def test_existing_run_directory_is_never_resumed_silently(tmp_path):
    overrides = [*TINY, "trainer.max_epochs=1", "logger=none", "test=false"]
    tasks.train(compose_train(tmp_path, overrides))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    cfg = compose_train(tmp_path, [*overrides, "trainer.max_epochs=2"])
    tasks.train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2 * 3  # two fresh epochs of 3 batches, not 1 + 2


def test_unique_dir_never_hands_out_an_existing_folder(tmp_path):
    base = str(tmp_path / "runs" / "12-00-00")
    script = "import sys; from imgcap.run.cli import unique_dir; print(unique_dir(sys.argv[1]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, base],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**ENV, "PYTHONPATH": str(REPO)},
        )
        for _ in range(4)
    ]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert len(set(dirs)) == 4 and all(Path(d).is_dir() for d in dirs)
    assert unique_dir(base) not in dirs  # a fifth caller gets a fifth folder
    assert unique_dir(base) == unique_dir(base)  # stable within a process


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path):
    # Both fail fast (no dataset), after Hydra made their run directories.
    args = [str(REPO / "train.py"), f"paths.root_dir={tmp_path}", "model.encoder.weights=null"]
    procs = [
        subprocess.Popen(
            [sys.executable, *args], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 2
    runs = [p for p in (tmp_path / "outputs" / "train" / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 2 and all((r / "train.log").exists() for r in runs), runs


# ---------------------------------------------------------------------------- config values
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.beam_size=0", "model.beam_size"),
        ("model.decoder.attention_dim=0", "model.decoder.attention_dim"),
        ("model.decoder.attention_dim=abc", "model.decoder.attention_dim"),
        ("model.decoder.attention_dim=-5", "model.decoder.attention_dim"),
        ("model.decoder.dropout=1.5", "model.decoder.dropout"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.teacher_forcing_ratio=2", "model.teacher_forcing_ratio"),
    ],
)
def test_bad_model_and_data_values_name_the_key_before_any_work(override, key, tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "logger=none", override])
    with pytest.raises(ConfigError) as err:
        tasks.train(cfg)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)
    assert not (tmp_path / "data").exists()  # nothing generated, read or written


def test_error_from_a_dataloader_worker_is_one_line():
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in <module>\nimgcap.errors.DataError: cannot read '
        "image a.jpg (broken data stream); re-download it"
    )
    assert one_line(wrapped) == "cannot read image a.jpg (broken data stream); re-download it"


def test_corrupt_jpeg_with_intact_markers_is_caught_before_training(tmp_path):
    from PIL import Image

    from imgcap.data.datamodule import CaptionDataModule
    from tests.support.datasets import make_kaggle

    names = make_kaggle(tmp_path, n=8)
    noise = torch.randint(0, 256, (96, 96, 3), dtype=torch.uint8).numpy()
    path = tmp_path / "Images" / names[3]
    Image.fromarray(noise).save(path, format="JPEG")
    data = path.read_bytes()
    table = data.find(b"\xff\xc4")  # a Huffman table: zeroed, SOI and EOI left intact
    path.write_bytes(data[: table + 4] + bytes(40) + data[table + 44 :])
    with pytest.raises(DataError, match=names[3]) as err:
        CaptionDataModule(root=str(tmp_path), quiet=True, min_word_freq=1).setup("fit")
    assert "bad_images=skip" in str(err.value)
    dm = CaptionDataModule(root=str(tmp_path), quiet=True, min_word_freq=1, bad_images="skip")
    with pytest.warns(UserWarning, match=names[3]):
        dm.setup("fit")
    assert all(names[3] not in ids for ids in dm.annotations.splits.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the deferred check is for CUDA losses")
def test_guard_on_gpu_names_the_first_bad_step_when_it_reads_the_flag():
    from types import SimpleNamespace

    from imgcap.callbacks import FiniteGuard
    from imgcap.errors import DivergenceError

    guard = FiniteGuard()
    trainer = SimpleNamespace(global_step=1, log_every_n_steps=4, current_epoch=0)
    guard.on_train_batch_end(trainer, None, torch.tensor(float("nan"), device="cuda"), None, 0)
    trainer.global_step = 2  # not a reading step: no sync, no error yet
    guard.on_train_batch_end(trainer, None, torch.tensor(1.0, device="cuda"), None, 1)
    trainer.global_step = 4
    with pytest.raises(DivergenceError, match="step 1"):
        guard.on_train_batch_end(trainer, None, torch.tensor(1.0, device="cuda"), None, 2)
