"""The sweep engine (imgcap/sweep, hydra_plugins/imgcap_sweeper) with a cheap objective: no
training, so these run in seconds. The real demo sweeps are in tests/sweep/test_sweep_demo.py."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from imgcap.errors import ConfigError
from imgcap.run.pruners import build_pruner, pruner_spec
from imgcap.run.study_storage import default_storage, open_storage
from imgcap.run.trial_link import (
    ENV_STORAGE,
    ENV_STUDY,
    ENV_TRIAL,
    STUDY_ATTR_PRUNER,
    LinkedTrial,
    trial_address,
)
from imgcap.sweep.results import write_plots, write_results
from imgcap.sweep.space import default_study_name, format_value, parse_search_space
from imgcap.sweep.study_runner import (
    ATTR_INTERRUPTED,
    ATTR_OWNER,
    ATTR_RESUME_FROM,
    ATTR_RETRY_OF,
    StudyRunner,
    TrialJob,
)
from imgcap.sweep.workers import Slot, plan_slots

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "tests" / "sweep" / "sweep_app" / "app.py"

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------------------- search space
def test_search_space_syntax_maps_to_optuna_distributions():
    space = parse_search_space(
        {
            "model.attention_dim": "choice(128, 256)",
            "model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
            "model.decoder.dropout": "interval(0.1, 0.5)",
            "trainer.max_epochs": "range(2, 11, 4)",
            "model.decoder.embed_dim": "range(64, 129)",
            "data.batch_size": "32",
            "model.objective.name": "choice(xe, 'a b')",
            "model.encoder.lr": "range(0.1, 0.4, 0.1)",
        },
        ["model.decoder.decoder_dim=256,512", "experiment=demo"],
    )
    d = space.distributions
    # The design card's flat key is the real key's parameter.
    assert d["model.decoder.attention_dim"] == CategoricalDistribution([128, 256])
    assert d["model.optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.decoder.dropout"] == FloatDistribution(0.1, 0.5)
    assert d["trainer.max_epochs"] == IntDistribution(2, 10, step=4)  # 2, 6, 10: stop excluded
    assert d["model.decoder.embed_dim"] == IntDistribution(64, 128)
    assert d["model.decoder.decoder_dim"] == CategoricalDistribution([256, 512])
    assert d["model.objective.name"] == CategoricalDistribution(["xe", "a b"])
    low, high = d["model.encoder.lr"].low, d["model.encoder.lr"].high
    assert (low, d["model.encoder.lr"].step) == (0.1, 0.1) and math.isclose(high, 0.3)
    assert space.fixed == ["data.batch_size=32", "experiment=demo"]
    overrides = space.overrides(
        {
            "model.decoder.attention_dim": 128,
            "model.objective.name": "a b",
            "model.optimizer.lr": 1e-3,
        }
    )
    assert overrides == [
        "data.batch_size=32",
        "experiment=demo",
        "++model.decoder.attention_dim=128",  # an alias becomes ++real.key, as on the command line
        "model.objective.name='a b'",
        "model.optimizer.lr=0.001",
    ]


def test_command_line_sweeps_override_the_configured_params():
    space = parse_search_space(
        {"model.decoder.attention_dim": "choice(256, 512)"},
        ["++model.decoder.attention_dim=choice(64,96)", "model.attention_dim=choice(32)"],
    )
    assert space.distributions["model.decoder.attention_dim"] == CategoricalDistribution([32])


@pytest.mark.parametrize(
    "params",
    [
        {"x": "interval(1.0, 1.0)"},
        {"x": "tag(log, interval(0, 1.0))"},
        {"x": "range(5, 1)"},
        {"x": "choice("},
    ],
)
def test_bad_search_spaces_are_one_line_errors(params):
    with pytest.raises(ConfigError) as err:
        parse_search_space(params, [])
    assert "\n" not in str(err.value) and "x" in str(err.value)


def test_study_name_is_stable_and_follows_the_search_space():
    space = parse_search_space({"x": "interval(0.0, 1.0)"}, [])
    args = ["experiment=demo", "paths.root_dir=/tmp/a"]
    name = default_study_name("demo", space, args, "val/CIDEr")
    assert name.startswith("demo-")
    # Where things live does not change the study; what is trained does.
    assert (
        default_study_name("demo", space, ["experiment=demo", "paths.root_dir=/b"], "val/CIDEr")
        == name
    )
    assert default_study_name("demo", space, [*args, "trainer.max_epochs=3"], "val/CIDEr") != name
    other = parse_search_space({"x": "interval(0.0, 2.0)"}, [])
    assert default_study_name("demo", other, args, "val/CIDEr") != name
    assert format_value(None) == "null" and format_value("/a b/c") == "'/a b/c'"


# ---------------------------------------------------------------------------- storage
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_storage_round_trip(tmp_path, kind):
    url = (
        default_storage(tmp_path / "outputs", "train", "s1")
        if kind == "journal"
        else f"sqlite:///{tmp_path}/studies/s.db"
    )
    study = optuna.create_study(study_name="s1", storage=open_storage(url), direction="maximize")
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.report(0.5, 0)
    trial.set_user_attr("run_dir", "/runs/0")
    study.tell(trial, 0.75)
    study.set_user_attr(STUDY_ATTR_PRUNER, {"name": "median", "settings": {}})
    # A second process opens the same storage afresh.
    again = optuna.load_study(study_name="s1", storage=open_storage(url))
    (frozen,) = again.get_trials()
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.75
    assert frozen.intermediate_values == {0: 0.5} and frozen.user_attrs["run_dir"] == "/runs/0"
    assert again.user_attrs[STUDY_ATTR_PRUNER]["name"] == "median"
    if kind == "journal":
        assert (tmp_path / "outputs" / "train" / "studies" / "s1.journal").is_file()


def test_a_bad_storage_url_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        open_storage("postgresql+nodriver://nobody@nowhere/db")
    assert "hydra.sweeper.storage" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------- pruning
def test_pruner_choices_and_settings():
    assert type(build_pruner("median")).__name__ == "MedianPruner"
    assert type(build_pruner("hyperband", {"min_resource": 1})).__name__ == "HyperbandPruner"
    assert type(build_pruner("successive_halving")).__name__ == "SuccessiveHalvingPruner"
    assert type(build_pruner(None)).__name__ == "NopPruner"
    with pytest.raises(ConfigError, match="not one of"):
        pruner_spec("asha", {})
    with pytest.raises(ConfigError, match="do not fit pruner=median"):
        build_pruner("median", {"min_resource": 1})


def test_a_job_reports_to_its_trial_and_is_pruned_by_the_studys_pruner(tmp_path, monkeypatch):
    """The job side (another process in a sweep) learns its trial from the environment and
    prunes with the pruner the sweeper stored in the study."""
    url = str(tmp_path / "s.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    study.set_user_attr(STUDY_ATTR_PRUNER, pruner_spec("median", {"n_startup_trials": 2}))
    for value in (0.8, 0.9):  # two finished trials set the median at each step
        t = study.ask()
        for step in range(3):
            t.report(value, step)
        study.tell(t, value)
    bad, good = study.ask(), study.ask()
    monkeypatch.setenv(ENV_STORAGE, url)
    monkeypatch.setenv(ENV_STUDY, "s")
    monkeypatch.setenv(ENV_TRIAL, str(bad.number))
    assert trial_address().number == bad.number
    assert LinkedTrial(trial_address()).report(0.1, step=0) is True  # below the median: prune
    monkeypatch.setenv(ENV_TRIAL, str(good.number))
    assert LinkedTrial(trial_address()).report(0.95, step=0) is False
    assert study.get_trials()[bad.number].intermediate_values == {0: 0.1}
    monkeypatch.delenv(ENV_TRIAL)
    assert trial_address() is None  # outside a sweep nothing is linked


# ---------------------------------------------------------------------------- the runner
def cheap_runner(tmp_path: Path, n_trials: int, **kwargs) -> tuple[StudyRunner, Path]:
    url = str(tmp_path / "study.journal")
    study = optuna.create_study(
        study_name="cheap",
        storage=open_storage(url),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        load_if_exists=True,
    )
    space = parse_search_space({"x": "interval(-2.0, 2.0)"}, [])

    def make_job(trial):
        run_dir = tmp_path / "runs" / str(trial.number)
        resume_from = trial.user_attrs.get("resume_from")
        return TrialJob(
            trial.number, dict(trial.params), [], {}, run_dir=str(run_dir), resume_from=resume_from
        )

    runner = StudyRunner(study, space, n_trials, make_job, heartbeat_interval=0.2, **kwargs)
    return runner, tmp_path / "ran.txt"


def objective_recording(record: Path, sleep: float = 0.0):
    def run(job: TrialJob) -> float:
        with open(record, "a") as f:
            f.write(f"{job.number}\n")
        time.sleep(sleep)
        return -((job.params["x"] - 1) ** 2)

    return run


def test_workers_run_each_trial_once_and_stop_at_n_trials(tmp_path):
    runner, record = cheap_runner(tmp_path, n_trials=5)
    runner.run([Slot(0), Slot(1)], objective_recording(record, sleep=0.05))
    numbers = [int(x) for x in record.read_text().split()]
    assert sorted(numbers) == [0, 1, 2, 3, 4]
    states = [t.state for t in runner.study.get_trials()]
    assert states == [TrialState.COMPLETE] * 5


def test_a_failing_or_non_finite_trial_is_failed_and_the_sweep_goes_on(tmp_path):
    runner, _ = cheap_runner(tmp_path, n_trials=3)

    def run(job):
        if job.number == 0:
            raise FloatingPointError("the loss is nan")
        return float("nan") if job.number == 1 else 1.0

    runner.run([Slot(0)], run)
    trials = runner.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "nan" in trials[0].user_attrs["error"] and not trials[0].user_attrs.get("interrupted")


def test_a_trial_of_a_killed_sweep_is_retried_from_its_checkpoint_and_finished_ones_never_rerun(
    tmp_path,
):
    runner, record = cheap_runner(tmp_path, n_trials=2)
    runner.run([Slot(0)], objective_recording(record))  # 2 trials done, then "killed" in the 3rd:
    # a trial left running by a sweep process that no longer exists, with a checkpoint.
    orphan_dir = tmp_path / "runs" / "orphan"
    (orphan_dir / "checkpoints").mkdir(parents=True)
    (orphan_dir / "checkpoints" / "last.ckpt").write_text("2")
    study = runner.study
    lost = study.ask({"x": FloatDistribution(-2, 2)})
    lost.set_user_attr(ATTR_OWNER, f"{os.uname().nodename}:999999999")
    lost.set_user_attr("run_dir", str(orphan_dir))
    seen = tmp_path / "seen.txt"

    def run(job):  # in a worker process: what it was given goes to a file
        seen.write_text(f"{job.number} {job.resume_from} {job.params['x']}")
        return 0.0

    again, _ = cheap_runner(tmp_path, n_trials=3)
    again.run([Slot(0)], run)
    trials = study.get_trials()
    old = trials[lost.number]
    assert old.state == TrialState.FAIL and old.user_attrs[ATTR_INTERRUPTED]
    retry = [t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == lost.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs[ATTR_RESUME_FROM] == str(orphan_dir / "checkpoints" / "last.ckpt")
    assert retry[0].params == old.params
    # Only the retry ran: the complete trials 0 and 1 were not run again.
    resume = orphan_dir / "checkpoints" / "last.ckpt"
    assert seen.read_text() == f"{retry[0].number} {resume} {old.params['x']}"


def test_two_sweep_processes_share_a_study_and_never_run_a_trial_twice(tmp_path):
    """Two sweeps (separate processes, two workers each) on one journal file, as on two
    machines sharing a filesystem: 8 trials in total, each run exactly once."""
    code = f"""
import sys, time, optuna
sys.path.insert(0, {str(REPO)!r})
from tests.sweep.test_sweep import cheap_runner, objective_recording
from imgcap.sweep.workers import Slot
from pathlib import Path
runner, record = cheap_runner(Path({str(tmp_path)!r}), n_trials=8)
runner.run([Slot(0), Slot(1)], objective_recording(record, sleep=0.3))
print("ran", runner.ran)
"""
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    numbers = [int(x) for x in (tmp_path / "ran.txt").read_text().split()]
    assert sorted(numbers) == list(range(8))  # every trial once, none twice, none beyond 8
    assert all("ran [" in out and out.strip() != "ran []" for out in outputs), outputs


def test_slots_assign_gpus_round_robin_and_share_cpus():
    slots = plan_slots(4, trials_per_gpu=2, gpus=["0", "1"])
    assert [s.gpu for s in slots] == ["0", "1", "0", "1"]
    assert len(plan_slots(5, trials_per_gpu=2, gpus=["0", "1"])) == 4  # capacity 2 x 2
    cpu = plan_slots(2, gpus=[])
    assert all(s.gpu is None and s.threads >= 1 for s in cpu)


# ---------------------------------------------------------------------------- results
def test_results_files_hold_the_best_trial_and_every_trial(tmp_path):
    study = optuna.create_study(direction="maximize")
    run_dir = tmp_path / "runs" / "1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_text("x")
    values = {0: 0.2, 1: 0.6, 2: None, 3: 0.4}
    for number, value in values.items():
        t = study.ask(
            {
                "lr": FloatDistribution(1e-4, 1e-2, log=True),
                "dim": CategoricalDistribution([64, 128]),
            }
        )
        t.set_user_attr("run_dir", str(tmp_path / "runs" / str(number)))
        t.set_user_attr("epochs", 3)
        for step in range(2):
            t.report((value or 0.1) * (step + 1) / 2, step)
        if number == 2:
            t.set_user_attr("pruned_at_epoch", 1)
            study.tell(t, state=TrialState.PRUNED)
        else:
            study.tell(t, value)
    summary = write_results(study, tmp_path / "sweep", "/studies/x.journal")
    saved = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert saved == summary
    assert saved["best_value"] == 0.6 and saved["best_trial"] == 1
    assert saved["best_run_dir"] == str(run_dir)
    assert saved["best_checkpoint"] == str(run_dir / "checkpoints" / "best.ckpt")
    assert set(saved["best_params"]) == {"lr", "dim"} and saved["trials"] == {
        "complete": 3,
        "pruned": 1,
    }
    with open(tmp_path / "sweep" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned", "complete"]
    assert rows[2]["pruned_at_epoch"] == "1" and rows[1]["value"] == "0.6"
    assert {"number", "epochs", "run_dir", "lr", "dim"} <= set(rows[0])
    plots = write_plots(study, tmp_path / "sweep")
    names = {p.name for p in plots}
    assert {"optimization_history.png", "param_importances.png", "intermediate_values.png"} <= names
    assert all(p.stat().st_size > 1000 for p in plots)


# ---------------------------------------------------------------------------- through Hydra
def run_app(tmp_path: Path, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {
        **os.environ,
        "SWEEP_APP_ROOT": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, str(APP), "-m", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, **popen)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def journal_study(tmp_path: Path) -> optuna.Study:
    (path,) = (tmp_path / "outputs" / "train" / "studies").glob("*.journal")
    return optuna.load_study(study_name=path.stem, storage=open_storage(str(path)))


def test_hydra_finds_the_sweeper_and_a_rerun_continues_the_study(tmp_path):
    done = run_app(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "setup plugin alembic" not in done.stderr + done.stdout
    sweep = tmp_path / "outputs" / "multiruns" / "sweep"
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["trials"] == {"complete": 3}
    assert result["study_name"].startswith("train-")
    assert {p.name for p in (sweep / "plots").glob("*.png")} >= {"optimization_history.png"}
    # The same command with a larger n_trials continues the same study (journal file).
    again = run_app(tmp_path, "hydra.sweeper.n_trials=5")
    assert again.returncode == 0, again.stderr[-3000:]
    study = journal_study(tmp_path)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 5
    # The rerun's seeded sampler does not draw the first run's points again.
    assert len({t.params["x"] for t in study.get_trials()}) == 5
    numbers = [int(line.split()[0]) for line in (tmp_path / "runs.txt").read_text().splitlines()]
    assert sorted(numbers) == [0, 1, 2, 3, 4]
    status = subprocess.run(
        [sys.executable, "-m", "imgcap.sweep", "status", str(result["storage"])],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert status.returncode == 0 and "5 complete" in status.stdout, status.stderr


def test_pruning_and_divergence_through_hydra(tmp_path):
    done = run_app(
        tmp_path,
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.pruner=median",
        "+hydra.sweeper.pruner_settings.n_startup_trials=2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = journal_study(tmp_path).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and len(pruned) + sum(t.state == TrialState.COMPLETE for t in trials) == 8
    for t in pruned:  # stopped at the epoch it was judged on, before the last one
        assert t.user_attrs["pruned_at_epoch"] == max(t.intermediate_values) < 3
    rows = list(csv.DictReader(open(tmp_path / "outputs" / "multiruns" / "sweep" / "trials.csv")))
    assert sum(r["state"] == "pruned" for r in rows) == len(pruned)
    # A diverging trial fails and the sweep goes on (and counts it: it is a result).
    nan_dir = tmp_path / "nan"
    nan_dir.mkdir()
    failing = run_app(nan_dir, "hydra.sweeper.n_trials=2", "nan_at=1")
    assert failing.returncode == 0, failing.stderr[-3000:]
    nan_study = journal_study(nan_dir)
    assert [t.state for t in nan_study.get_trials()] == [TrialState.FAIL] * 2
    assert "nan" in nan_study.get_trials()[0].user_attrs["error"]


def test_sigterm_stops_the_sweep_consistently_and_a_rerun_resumes_the_trial(tmp_path):
    proc = run_app(
        tmp_path,
        "hydra.sweeper.n_trials=3",
        "sleep=0.4",
        "epochs=5",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    runs = tmp_path / "runs.txt"
    deadline = time.time() + 120
    # Wait until the second trial has a checkpoint.
    while time.time() < deadline:
        lines = runs.read_text().splitlines() if runs.is_file() else []
        ckpt = tmp_path / "outputs" / "multiruns" / "sweep" / "1" / "checkpoints" / "last.ckpt"
        if len(lines) >= 2 and ckpt.is_file():
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "run the same command again" in err
    study = journal_study(tmp_path)
    states = [t.state for t in study.get_trials()]
    assert TrialState.RUNNING not in states  # the storage is consistent
    assert study.get_trials()[1].user_attrs[ATTR_INTERRUPTED]
    again = run_app(tmp_path, "hydra.sweeper.n_trials=3", "sleep=0.4", "epochs=5")
    assert again.returncode == 0, again.stderr[-3000:]
    trials = journal_study(tmp_path).get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 3
    retry = next(t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == 1)
    assert retry.user_attrs[ATTR_RESUME_FROM].endswith("sweep/1/checkpoints/last.ckpt")
    records = [line.split() for line in runs.read_text().splitlines()]
    assert [r[0] for r in records].count("0") == 1  # the complete trial never reran
    resumed = next(r for r in records if r[0] == str(retry.number))
    assert int(resumed[3]) >= 1  # it started from its checkpoint's epoch, not from 0


def test_the_timeout_stops_starting_trials(tmp_path):
    runner, record = cheap_runner(tmp_path, n_trials=100, timeout=0.5)
    runner.run([Slot(0)], objective_recording(record, sleep=0.3))
    ran = len(record.read_text().split())
    assert 1 <= ran <= 3 and len(runner.study.get_trials()) == ran


def test_sqlite_storage_through_hydra_without_alembic_noise(tmp_path):
    db = tmp_path / "studies.db"
    done = run_app(tmp_path, "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=sqlite:///{db}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "alembic" not in (done.stdout + done.stderr).lower()
    (summary,) = optuna.get_all_study_summaries(storage=f"sqlite:///{db}")
    assert summary.n_trials == 2


def test_the_slurm_launcher_composes_with_the_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.core.hydra_config import HydraConfig

    from tests.support.hydra_helpers import compose_train

    compose_train(tmp_path, ["hparams_search=optuna", "hydra/launcher=slurm"])
    hydra_cfg = HydraConfig.get()
    assert hydra_cfg.launcher._target_.endswith("SlurmLauncher")
    assert hydra_cfg.launcher.gpus_per_node == 1
    assert hydra_cfg.sweeper._target_.endswith("ImgcapOptunaSweeper")


def test_wandb_runs_of_a_study_are_grouped_by_the_study_and_named_by_trial(tmp_path, monkeypatch):
    from imgcap.run.loggers import sweep_job
    from tests.support.hydra_helpers import compose_train

    compose_train(
        tmp_path,
        [
            "experiment=demo",
            "hparams_search=optuna",
            "model.decoder.attention_dim=64",
            f"hydra.sweep.dir={tmp_path}/multiruns/2026-01-31/12-00-00",
        ],
    )
    monkeypatch.setenv(ENV_STORAGE, str(tmp_path / "s.journal"))
    monkeypatch.setenv(ENV_STUDY, "demo-1234abcd")
    monkeypatch.setenv(ENV_TRIAL, "3")
    assert sweep_job() == ("demo-1234abcd", "trial3:model.decoder.attention_dim=64")
