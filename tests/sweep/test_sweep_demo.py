"""Real sweeps of the demo through train.py (slow): pruning, SIGTERM and resume; SLURM through
submitit's local executor; the plugin found from a fresh clone installed with ``pip -e``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from imgcap.run.study_storage import open_storage
from tests.support.scripts import ENV, REPO

# The demo sweep made small: 240 images, 5 epochs, CIDEr as the objective; a learning rate of
# 1e-7 learns nothing and trails 1e-2 clearly by epoch 3, so pruning is deterministic.
# RandomSampler(seed=6) draws lr 1e-2, 1e-2, 1e-7 for trials 0, 1, 2.
SMALL_DEMO_SWEEP = [
    "-m",
    "hparams_search=optuna",
    "experiment=demo_sweep",
    "data.synthetic.num_images=240",
    "trainer.max_epochs=5",
    "test=false",
    "monitor=val/CIDEr",
    "model.optimizer.lr=choice(0.01,1e-7)",
    "model.decoder.attention_dim=choice(32)",
    "~hydra.sweeper.sampler.n_startup_trials",
    "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
    "hydra.sweeper.sampler.seed=6",
    "callbacks.progress_bar=null",
    "print_config=false",
]


def train_cmd(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        *SMALL_DEMO_SWEEP,
        f"paths.root_dir={tmp_path}",
        *args,
    ]


def the_study(tmp_path: Path) -> optuna.Study:
    (path,) = (tmp_path / "outputs" / "train" / "studies").glob("*.journal")
    return optuna.load_study(study_name=path.stem, storage=open_storage(str(path)))


@pytest.mark.slow
def test_a_demo_sweep_prunes_a_hopeless_trial(tmp_path):
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        train_cmd(
            tmp_path,
            "hydra.sweeper.n_trials=3",
            "+hydra.sweeper.pruner_settings.n_startup_trials=2",
            "+hydra.sweeper.pruner_settings.n_warmup_steps=3",
            f"hydra.sweep.dir={sweep}",
        ),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = the_study(tmp_path).get_trials()
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
    ]
    assert trials[2].params["model.optimizer.lr"] == 1e-7
    pruned_dir = sweep / "2"
    metrics = json.loads((pruned_dir / "metrics.json").read_text())
    assert metrics["trial_state"] == "pruned" and metrics["pruned_at_epoch"] == 3
    assert metrics["epochs"] == 4 < 5  # epochs 0-3: stopped after the epoch it was judged on
    assert not any(k.startswith("test/") for k in metrics)  # no test run
    assert (pruned_dir / "PRUNED").read_text().startswith("pruned at epoch 3")
    assert "trial 2 pruned at epoch 3" in done.stdout
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_trial"] in (0, 1) and result["best_checkpoint"].endswith("best.ckpt")
    assert result["trials"] == {"complete": 2, "pruned": 1}
    assert (sweep / "trials.csv").read_text().count("\n") == 4
    assert (sweep / "plots" / "intermediate_values.png").is_file()


@pytest.mark.slow
def test_sigterm_during_a_demo_sweep_then_the_same_command_resumes_it(tmp_path):
    """SIGTERM to the sweep during its second trial: exit 143, the trial saved a checkpoint and
    is queued again; the same command then finishes 3 trials, resuming that one from its
    checkpoint, without rerunning the complete one."""
    cmd = train_cmd(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=none")
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 1200
    second = None
    while time.time() < deadline and proc.poll() is None:
        found = list(
            (tmp_path / "outputs" / "train" / "multiruns").glob("*/*/1/checkpoints/last.ckpt")
        )
        if found:
            second = found[0].parent.parent
            break
        time.sleep(0.5)
    assert second is not None, "the second trial never wrote a checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "run the same command again" in err
    trials = the_study(tmp_path).get_trials()
    # Trial 1 is failed-and-interrupted, and its retry (trial 2) waits in the queue.
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["interrupted"]

    again = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = the_study(tmp_path).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == trials[1].params
    assert Path(retry.user_attrs["resume_from"]).parent.parent == second
    assert retry.user_attrs["run_dir"] == str(second)
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["epochs"] == 5  # the resumed run finished its own epochs, in its own folder
    # Trials 0 and 1 have the same parameters and seed: resuming was exact.
    assert trials[0].params == trials[1].params and retry.value == trials[0].value
    # Trial 0 ran once: one run directory holds its metrics.
    first_runs = list((tmp_path / "outputs" / "train" / "multiruns").glob("*/*/0/metrics.json"))
    assert len(first_runs) == 1


@pytest.mark.slow
def test_a_sweep_through_submitit_local_executor(tmp_path):
    """hydra/launcher=submitit_local: the sweep submits n_jobs trials per batch."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {
        **ENV,
        "SWEEP_APP_ROOT": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "sweep" / "sweep_app" / "app.py"),
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = the_study(tmp_path)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    # Each job learnt its trial through hydra.job.env_set and reported to it.
    assert all(t.intermediate_values for t in study.get_trials())
    sweep = tmp_path / "outputs" / "multiruns" / "sweep"
    assert (
        yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] is not None
    )


@pytest.mark.slow
def test_hydra_finds_the_plugin_in_a_fresh_clone_installed_editable(tmp_path):
    """`git clone` + `pip install -e .`: the sweeper is found from any directory (an editable
    install made with an import hook would hide hydra_plugins from Hydra's scan)."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # Test what is on disk (committed or not) in this checkout.
    for rel in ("pyproject.toml", "hydra_plugins", "imgcap"):
        src, dst = REPO / rel, clone / rel
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    venv = tmp_path / "venv"
    # No pip or setuptools of its own: both come from this environment, with the dependencies.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies come from this interpreter's environment (no download).
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
    install = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-e",
            str(clone),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "import imgcap, hydra_plugins.imgcap_sweeper as p\n"
        "names = [c.__name__ for c in Plugins.instance().discover(Sweeper)]\n"
        "print(names, imgcap.__file__, p.__file__)\n"
    )
    found = subprocess.run(
        [str(py), "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert found.returncode == 0, found.stderr[-2000:]
    assert "ImgcapOptunaSweeper" in found.stdout
    assert str(clone) in found.stdout  # the clone's code, not this checkout's
