"""A run tells the truth about itself: writes are whole or absent, a resumed run keeps one
history (CSV rows, TensorBoard, config tree, resume record, W&B run id), the log file holds
what the console showed, metrics.json records where the run came from, the console is quiet."""

from __future__ import annotations

import csv
import errno
import json
import logging
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from imgcap import atomic
from imgcap.atomic import WriteError
from imgcap.checkpoint import read_checkpoint
from imgcap.run import cli, tasks
from imgcap.run.console import hydra_error_line, one_line_warning, strip_escapes
from imgcap.run.loggers import swept_keys
from imgcap.run.provenance import git_state, provenance
from tests.support.callbacks import signal_at
from tests.support.hydra_helpers import compose_train
from tests.support.runs import TINY
from tests.support.scripts import REPO, run_script


# ------------------------------------------------------------------------ atomic writes
def test_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic.write_json(target, {"v": 1})

    def fill_the_disk(f):
        f.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as info:
        atomic.write_with(target, fill_the_disk)
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    message = str(info.value)
    assert "\n" not in message
    assert f"metrics.json in {tmp_path}" in message and "No space left on device" in message


def test_atomic_files_get_the_usual_permissions(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o077 != 0  # not private like a mkstemp file


def test_full_disk_during_training_keeps_best_ckpt_loadable_and_ends_in_one_line(
    tmp_path, monkeypatch, caplog
):
    """best.ckpt is rewritten each epoch here (no monitor); the second epoch's save fails
    half-way, as on a disk that fills up: the first epoch's file survives, whole."""
    import imgcap.run.checkpoint_io as checkpoint_io

    cfg = compose_train(
        tmp_path,
        [*TINY, "trainer.max_epochs=2", "logger=none", "callbacks.model_checkpoint.monitor=null"],
    )
    saves = {"n": 0}
    real_save = torch.save

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] > 2:  # epoch 0 wrote best.ckpt and last.ckpt
            f.write(b"\x80\x02partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", save_until_the_disk_is_full)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as info:
        cli.run_task(tasks.train, cfg)
    assert info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("error:")]
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert f"cannot write best.ckpt in {ckpt_dir}" in errors[0]
    assert "No space left on device" in errors[0]
    best = read_checkpoint(ckpt_dir / "best.ckpt")  # whole, from epoch 0
    assert best["epoch"] == 0
    leftovers = [p.name for p in ckpt_dir.iterdir() if p.name not in ("best.ckpt", "last.ckpt")]
    assert leftovers == []  # no temp file, no partial on_exception.ckpt


def test_checkpoints_are_written_through_a_temp_file_in_their_own_folder(tmp_path, monkeypatch):
    """Its temporary file lives in the checkpoints folder, never in /tmp (a rename across file
    systems is a copy that a full disk can cut short)."""
    import imgcap.atomic as atomic_module

    seen: list[str] = []
    real_mkstemp = atomic_module.tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        seen.append(str(kwargs.get("dir")))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(atomic_module.tempfile, "mkstemp", recording_mkstemp)
    cfg = compose_train(tmp_path, [*TINY, "trainer.max_epochs=1", "logger=none", "test=false"])
    tasks.train(cfg)
    ckpt_dir = str(Path(cfg.paths.output_dir) / "checkpoints")
    assert ckpt_dir in seen and all(not d.startswith("/tmp/tmp") for d in seen), seen


# ------------------------------------------------------------------------ CSV history
def test_csv_logger_appends_to_the_rows_of_the_first_part(tmp_path):
    from imgcap.run.csv_history import HistoryCSVLogger

    first = HistoryCSVLogger(tmp_path, name="csv", version="")
    for step in range(4):
        first.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    first.save()
    resumed = HistoryCSVLogger(tmp_path, name="csv", version="")
    resumed.experiment.drop_rows_after(2)  # steps 3.. are trained again
    resumed.log_metrics({"train/loss": 0.2, "val/BLEU-4": 0.5}, step=3)
    resumed.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["train/loss"] == "1.0" and rows[3]["val/BLEU-4"] == "0.5"
    assert [p.name for p in (tmp_path / "csv").iterdir()] == ["metrics.csv"]


# ------------------------------------------------------------------------ provenance
def test_provenance_names_commit_packages_seed_and_overrides(tmp_path):
    block = provenance(7, ["a=1"])
    assert set(block) >= {"git", "packages", "seed", "overrides"}
    assert block["seed"] == 7 and block["overrides"] == ["a=1"]
    assert set(block["packages"]) == {"imgcap", "torch", "torchvision", "lightning", "hydra"}
    assert block["packages"]["torch"] == torch.__version__.split("+")[0]
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    state = git_state(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"]) and state["dirty"] is False
    (tmp_path / "f").write_text("2")
    assert git_state(tmp_path)["dirty"] is True


# ------------------------------------------------------------------------ console pieces
def test_warnings_are_one_line_without_source():
    text = one_line_warning(UserWarning("careful"), UserWarning, "/x/y.py", 3, "code()")
    assert text == "warning: careful\n"


def test_escapes_and_carriage_returns_never_reach_files():
    assert strip_escapes("a\rb\x1b[A\x1b[31mc\x1b[0m") == "abc"


def test_hydra_errors_become_one_line_with_the_cause():
    from hydra.errors import InstantiationException, MissingConfigException

    err = MissingConfigException(
        "In 'train': Could not find 'experiment/nonexistent'\n\nAvailable options in "
        "'experiment':\n\tdemo\n\tflickr8k\nConfig search path:\n\tprovider=hydra",
        "experiment/nonexistent",
    )
    line = hydra_error_line(err)
    assert "nonexistent" in line and "available: demo, flickr8k" in line and "\n" not in line
    wrapped = InstantiationException(
        "Error in call to target 'lightning.pytorch.trainer.trainer.Trainer':\n"
        "ValueError(\"Precision 'banana' is invalid.\")\nfull_key: trainer"
    )
    wrapped.__cause__ = ValueError("Precision 'banana' is invalid.")
    assert hydra_error_line(wrapped) == (
        "cannot build trainer from the config: Precision 'banana' is invalid."
    )


def test_sweep_names_keep_only_the_overrides_that_vary(tmp_path):
    hydra = {"overrides": {"task": ["experiment=demo", "trainer.max_epochs=1", "seed=1,2"]}}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    assert swept_keys(tmp_path) == {"seed"}
    assert swept_keys(tmp_path / "missing") == set()


# ------------------------------------------------------------------------ resume, end to end
@pytest.mark.slow
def test_resumed_run_keeps_one_history(tmp_path):
    """Ctrl-C mid-epoch, then ``ckpt_path=... trainer.max_epochs=3``: CSV rows appended,
    TensorBoard continued, the run's own config tree, a resume record, the same W&B run."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    run_dir = tmp_path / "outputs" / "the-run"
    first = run_script(
        [
            str(REPO / "train.py"),
            *TINY,
            "trainer.max_epochs=2",
            "logger=many",
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={run_dir}",
            *signal_at("train", 1, 1, signal.SIGINT),
        ],
        tmp_path,
    )
    assert first.returncode == 130, first.stderr[-3000:]
    assert "weights_only" not in first.stderr + first.stdout  # README: checkpoints load safely
    saved = run_dir / "checkpoints" / "on_exception.ckpt"
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows_before = list(csv.DictReader(f))
    assert rows_before
    run_id = (run_dir / "wandb" / "run_id.txt").read_text().strip()
    assert read_checkpoint(saved)["imgcap"]["config"]["logger"]["wandb"]["id"] == run_id

    second = run_script(
        [str(REPO / "train.py"), f"ckpt_path={saved}", "trainer.max_epochs=3"], tmp_path
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "will be deleted" not in second.stderr + second.stdout

    # CSV: the first part's rows, then the rest (up to epoch 2).
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows_after = list(csv.DictReader(f))
    kept = [{k: v for k, v in r.items() if v} for r in rows_after[: len(rows_before)]]
    assert kept == [{k: v for k, v in r.items() if v} for r in rows_before]
    assert {0, 1, 2} <= {int(float(r["epoch"])) for r in rows_after if r.get("epoch")}
    # TensorBoard: a second event file in the same folder.
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    # The config tree is the run's own (small CNN on shapes), not the default config.
    tree = (run_dir / "config_tree.log").read_text()
    assert "arch: small_cnn" in tree and "data/shapes" in tree and "max_epochs: 3" in tree
    # The resume record, beside the first start's config.
    (record,) = yaml.safe_load((run_dir / ".hydra" / "resumes.yaml").read_text())
    assert record["checkpoint"] == str(saved.resolve())
    assert record["overrides"] == ["trainer.max_epochs=3"] and record["time"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # W&B: both parts are the same run.
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert metrics["provenance"]["resumes"][0]["overrides"] == ["trainer.max_epochs=3"]
    assert "data=shapes" in metrics["provenance"]["overrides"]  # the first start's
    # One log file, holding both parts, as the console showed them.
    log_text = (run_dir / "train.log").read_text()
    assert len(re.findall(r"\] - model: [\d.]+ \w* ?parameters", log_text)) == 2
    assert "test scores (" in log_text
    assert "Resume with: python train.py ckpt_path=" in log_text
    assert "\r" not in log_text and "\x1b" not in log_text


@pytest.mark.slow
def test_evaluate_and_caption_logs_hold_what_the_console_showed(tiny_run, tmp_path):
    best = tiny_run / "checkpoints" / "best.ckpt"  # TINY trained once per session
    images = sorted((tiny_run.parent / "data" / "shapes" / "Images").glob("*.jpg"))[:2]
    for script, args, expected in (
        ("evaluate", ["meteor=false", "num_workers=0"], "test scores, beam size"),
        ("caption", [f"images=[{images[0]},{images[1]}]"], images[0].name),
    ):
        done = run_script(
            [str(REPO / f"{script}.py"), f"ckpt={best}", *args, f"paths.root_dir={tmp_path}"],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert expected in done.stdout
        (run,) = (tmp_path / "outputs" / script / "runs").glob("*/*")
        log_text = (run / f"{script}.log").read_text()
        assert expected in log_text, log_text[-2000:]
        assert "\r" not in log_text and "\x1b" not in log_text
        assert_quiet(done.stdout + done.stderr)


# ------------------------------------------------------------------------ the console
# Lines a user should not meet (issue: a quiet console).
QUIET = {
    "accelerator lines": r"^(GPU|TPU|HPU) available",
    "weights_only warning": r"weights_only",
    "CSVLogger deletion warning": r"will be deleted",
    "cursor-up escapes": r"\x1b\[A",
    "version number in the bar": r"v_num",
    "unnamed parameter groups": r"pg\d",
    "warning echoing a source line": r"^\s+warnings\.warn\(|\.py:\d+: \w*Warning",
    "Hydra's hint": r"HYDRA_FULL_ERROR",
}


def assert_quiet(text: str) -> None:
    for what, pattern in QUIET.items():
        hits = [ln for ln in re.split(r"[\r\n]", text) if re.search(pattern, ln)]
        assert not hits, f"{what}: {hits[:3]}"


@pytest.mark.slow
def test_demo_console_is_quiet_and_the_log_file_holds_it(trained_demo):
    # train.py experiment=demo callbacks.progress_bar.refresh_rate=1
    done, tmp_path = trained_demo.console, trained_demo.root
    assert done.returncode == 0, done.stderr[-3000:]
    assert_quiet(done.stdout + done.stderr)
    assert done.stdout.startswith("config\n") and done.stdout.count("\n├── data") == 1
    assert "Epoch 1" in done.stdout  # the bar is still there
    (run,) = (tmp_path / "outputs" / "train" / "runs").glob("*/*")
    log_text = (run / "train.log").read_text()
    for line in ("split: official", "model: ", "test scores (", "BLEU-4", "├── data"):
        assert line in log_text, line
    assert "\r" not in log_text and "\x1b" not in log_text
    with open(run / "csv" / "metrics.csv", newline="") as f:
        columns = set(csv.DictReader(f).fieldnames or [])
    assert {"lr-Adam/decoder", "lr-Adam/encoder"} <= columns, columns


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "cause"),
    [
        ("experiment=nonexistent", "experiment/nonexistent"),
        ("trainer.precision=banana", "trainer.precision="),
        ("data.batch_size=0", "data.batch_size"),
    ],
)
def test_config_errors_end_with_their_cause_and_print_no_tree(tmp_path, override, cause):
    done = run_script(
        [str(REPO / "train.py"), *TINY, override, f"paths.root_dir={tmp_path}"], tmp_path
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and cause in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr
    assert "├── data" not in done.stdout  # no config tree before a config error


def test_config_tree_is_written_after_the_checks(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "trainer.max_epochs=1", "logger=none", "test=false"])
    tasks.train(cfg)
    tree = (Path(cfg.paths.output_dir) / "config_tree.log").read_text()
    assert tree.startswith("config\n") and "arch: small_cnn" in tree
    bad = compose_train(tmp_path / "bad", [*TINY, "data.batch_size=0"])
    with pytest.raises(Exception):  # noqa: B017 - the check's own error
        tasks.train(bad)
    assert not (Path(bad.paths.output_dir) / "config_tree.log").exists()
    assert OmegaConf.select(cfg, "print_config") is True


def test_a_message_during_an_open_progress_bar_starts_its_own_line():
    import io
    import logging

    from tqdm import tqdm

    from imgcap.run.console import ProgressSafeHandler

    stream = io.StringIO()
    logger = logging.getLogger("imgcap.test_progress_safe")
    handler = ProgressSafeHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with tqdm(total=10, file=stream, desc="Epoch 0") as bar:
            bar.update(3)
            logger.warning("time: training 1.0 s")
        lines = stream.getvalue().replace("\r", "\n").splitlines()
        assert "time: training 1.0 s" in [line.strip() for line in lines]
        assert not any(line.startswith("Epoch 0") and "time:" in line for line in lines)
    finally:
        logger.removeHandler(handler)
