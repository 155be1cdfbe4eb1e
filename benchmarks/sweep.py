"""The sweep engine's targets on the sweep-sized demo (experiment=demo_sweep), on this machine.

    python benchmarks/sweep.py [--part pruning|resume|parallel|all] [--images 240] [--trials 16]
                               [--epochs 10] [--out /tmp/imgcap-sweep-bench] [--threads 1] [--no-java]
                               [--override monitor=val/CIDEr] [--json]

(a) pruning:  a ``--trials`` sweep over lr x attention size with pruner=median, and the same
    sweep with pruner=none (same sampler seed): best validation score of each, their
    difference (target <= 0.01) and the fraction of epochs the pruned sweep ran (target <= 50%).
(b) resume:   a 6-trial sweep uninterrupted; the same sweep sent SIGTERM during its third trial
    and run again: trials complete or pruned, trials run twice, total epochs of both
    (target: 6, none, <= uninterrupted + one trial's epochs).
(c) parallel: a few trials with n_jobs=1 and the same with n_jobs=2: trials per hour each.

Each sweep is a real ``python train.py -m hparams_search=optuna experiment=demo_sweep`` in a
folder of its own. Epochs are counted from the storage (``epochs_run`` of every trial, so the
epochs of an interrupted trial count too). Times on a machine shared with other jobs are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from imgcap.run.study_storage import open_storage  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sweep_command(root: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "hparams_search=optuna",
        "experiment=demo_sweep",
        f"data.synthetic.num_images={args.images}",
        f"trainer.max_epochs={args.epochs}",
        "test=false",
        "callbacks.progress_bar=null",
        "print_config=false",
        f"paths.root_dir={root}",
        "hydra.sweeper.sampler.seed=1234",
        "hydra.sweeper.sampler.n_startup_trials=4",
        *args.override,
        *extra,
    ]


SETTINGS: dict[str, str] = {}


def environment() -> dict[str, str]:
    """The sweeps' environment: offline W&B; with --no-java the Java PTB tokenizer is hidden
    (PATH = this Python's folder: the Python imitation scores instead, the same in every arm);
    --threads sets OMP_NUM_THREADS for every trial (n_jobs=2 workers get half the cores each
    anyway)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **SETTINGS}
    return env


def run(cmd: list[str], log: Path) -> float:
    """Run a sweep to its end; its wall time in seconds."""
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run(cmd, env=environment(), stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def study_of(root: Path) -> optuna.Study:
    (path,) = (root / "outputs" / "train" / "studies").glob("*.journal")
    return optuna.load_study(study_name=path.stem, storage=open_storage(str(path)))


def summary(study: optuna.Study) -> dict:
    trials = study.get_trials()
    states: dict[str, int] = {}
    for t in trials:
        name = "interrupted" if t.user_attrs.get("interrupted") else t.state.name.lower()
        states[name] = states.get(name, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {
        "states": states,
        "best_value": max((t.value for t in complete), default=None),
        "epochs": sum(int(t.user_attrs.get("epochs_run") or 0) for t in trials),
        "finished": sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials),
        "trials": len(trials),
    }


def part_pruning(args: argparse.Namespace, out: Path) -> dict:
    """Both arms at once (their epochs and scores do not depend on time; on a shared machine
    two processes get more of it)."""
    results = {}
    arms = {}
    out.mkdir(parents=True, exist_ok=True)
    for name in ("median", "none"):
        extra = [f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.pruner={name}"]
        if name == "median":
            extra += [
                f"+hydra.sweeper.pruner_settings.n_startup_trials={args.startup}",
                f"+hydra.sweeper.pruner_settings.n_warmup_steps={args.warmup}",
            ]
        log = open(out / f"pruning_{name}.log", "w")  # closed below
        cmd = sweep_command(out / f"pruning_{name}", args, *extra)
        proc = subprocess.Popen(cmd, env=environment(), stdout=log, stderr=subprocess.STDOUT)
        arms[name] = (proc, log, time.perf_counter())
    for name, (proc, log, start) in arms.items():
        if proc.wait() != 0:
            raise SystemExit(f"sweep failed; see {log.name}")
        log.close()
        seconds = time.perf_counter() - start
        results[name] = {**summary(study_of(out / f"pruning_{name}")), "seconds": round(seconds, 1)}
        print(f"(a) pruner={name}: {results[name]}", flush=True)
    full = results["none"]["epochs"]
    results["best_value_difference"] = (
        results["none"]["best_value"] - results["median"]["best_value"]
    )
    results["epoch_fraction"] = results["median"]["epochs"] / full if full else None
    print(
        f"(a) best {results['median']['best_value']:.4f} (median) vs {results['none']['best_value']:.4f} "
        f"(none): difference {results['best_value_difference']:+.4f} (target <= 0.01); "
        f"epochs {results['median']['epochs']}/{full} = {results['epoch_fraction']:.0%} (target <= 50%)",
        flush=True,
    )
    return results


def part_resume(args: argparse.Namespace, out: Path) -> dict:
    extra = ["hydra.sweeper.n_trials=6"]
    plain = out / "resume_plain"
    run(sweep_command(plain, args, *extra), out / "resume_plain.log")
    uninterrupted = summary(study_of(plain))
    root = out / "resume_killed"
    cmd = sweep_command(root, args, *extra)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "resume_killed_1.log", "w") as log:
        proc = subprocess.Popen(cmd, env=environment(), stdout=log, stderr=subprocess.STDOUT)
        # SIGTERM during the third trial, once it has run an epoch.
        while proc.poll() is None:
            try:
                trials = study_of(root).get_trials()
            except ValueError:  # no journal yet
                trials = []
            if len(trials) >= 3 and int(trials[2].user_attrs.get("epochs") or 0) >= 1:
                break
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait()
    run(cmd, out / "resume_killed_2.log")
    resumed = summary(study_of(root))
    trials = study_of(root).get_trials()
    finished_keys = [
        tuple(sorted(t.params.items()))
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    results = {
        "sigterm_exit_code": code,
        "uninterrupted": uninterrupted,
        "interrupted_then_rerun": resumed,
        "finished": resumed["finished"],
        "run_twice": len(finished_keys) - len(set(finished_keys)),
        "retries": sum(t.user_attrs.get("retry_of") is not None for t in trials),
        "epoch_limit": uninterrupted["epochs"] + args.epochs,
    }
    print(
        f"(b) SIGTERM exit {code}; then {resumed['finished']} trials complete or pruned "
        f"(target 6), {results['run_twice']} finished twice, {results['retries']} retried; epochs "
        f"{resumed['epochs']} vs uninterrupted {uninterrupted['epochs']} + one trial "
        f"{args.epochs} = {results['epoch_limit']} (target <=)",
        flush=True,
    )
    return results


def part_parallel(args: argparse.Namespace, out: Path) -> dict:
    results = {}
    for jobs in (1, 2):
        root = out / f"parallel_{jobs}"
        extra = [
            f"hydra.sweeper.n_trials={args.parallel_trials}",
            f"hydra.sweeper.n_jobs={jobs}",
            "hydra.sweeper.pruner=none",
        ]
        seconds = run(sweep_command(root, args, *extra), out / f"parallel_{jobs}.log")
        results[f"n_jobs={jobs}"] = {
            "seconds": round(seconds, 1),
            "trials_per_hour": round(args.parallel_trials * 3600 / seconds, 1),
        }
        print(f"(c) n_jobs={jobs}: {results[f'n_jobs={jobs}']}", flush=True)
    one, two = (results[f"n_jobs={j}"]["trials_per_hour"] for j in (1, 2))
    results["ratio"] = round(two / one, 2)
    print(f"(c) trials/hour n_jobs=2 / n_jobs=1 = {results['ratio']}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", choices=["pruning", "resume", "parallel", "all"])
    parser.add_argument("--images", type=int, default=240, help="generated demo images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=16, help="trials of the pruning sweeps")
    parser.add_argument("--parallel-trials", type=int, default=4)
    parser.add_argument("--startup", type=int, default=4, help="median pruner n_startup_trials")
    parser.add_argument("--warmup", type=int, default=2, help="median pruner n_warmup_steps")
    parser.add_argument("--out", type=Path, default=Path("/tmp/imgcap-sweep-bench"))
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per trial")
    parser.add_argument("--no-java", action="store_true", help="score without the JVM tokenizer")
    parser.add_argument(
        "--override", action="append", default=[], help="extra override for every sweep"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        SETTINGS["OMP_NUM_THREADS"] = str(args.threads)
    if args.no_java:
        SETTINGS["PATH"] = str(Path(sys.executable).parent)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {SETTINGS or 'defaults'};"
        f" outputs in {args.out}",
        flush=True,
    )
    parts = ["pruning", "resume", "parallel"] if args.part == "all" else [args.part]
    results = {}
    for part in parts:
        results[part] = globals()[f"part_{part}"](
            args, args.out / part if args.part == "all" else args.out
        )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
