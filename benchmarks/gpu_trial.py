"""One whole Flickr8k-sized trial, measured: generate the JPEG set here, train on it, report.

    python benchmarks/gpu_trial.py [--images 8091] [--epochs 30] [--trainer gpu] [-- OVERRIDES]

(run through ``benchmarks/gpu_trial.sh``, which puts ``.gpu_deps`` on PYTHONPATH). Steps:

1. Generate the set (``imgcap.data.flickr_like``, one process per core) into ``--data-root``
   (default ``/tmp/imgcap_flickr_like_<images>``; a complete set there is reused, and the JSON
   says so).
2. Run ``python train.py experiment=flickr8k trainer=<trainer> model.encoder.weights=null
   logger=csv callbacks.early_stopping=null data.root=<set>`` for ``--epochs`` epochs with
   validation every epoch and the test at the end, in a fresh run directory and with a fresh
   feature cache (so the cache build is part of the trial), cut off by ``timeout`` so that the
   whole script stays within ``--budget`` seconds. Its log goes to ``<out>/trial.log``; its
   phase lines (``time: ...``, see :mod:`imgcap.phase_timing`) are echoed as they come.
3. Print the wall time from the command to ``metrics.json`` and the phase breakdown, and write
   ``<out>/gpu_trial.json``: ``gpu_trial_minutes`` (null when the run did not finish: it was cut
   off or failed; ``completed`` says which), ``gpu_trial_breakdown`` (seconds per phase, from
   ``metrics.json``, or from ``timings.json`` as far as a cut-off run got) and the details.

``--out`` defaults to ``$OUT`` when set, else the work folder. ``benchmarks/run_all.py
--gpu-trial-json <out>/gpu_trial.json`` carries the two keys into its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def device_name(trainer: str) -> str:
    if trainer == "cpu":
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "unknown"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def run_logged(command: list[str], log_path: Path, timeout_s: float) -> tuple[int, bool]:
    """Run ``command`` with its output in ``log_path`` and its phase lines echoed as they come;
    ``timeout`` stops it with SIGTERM after ``timeout_s`` (the run then writes its checkpoint
    and timings) and SIGKILL 20 s later. Returns (exit status, whether it was cut off)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    limited = ["timeout", "--signal=TERM", "--kill-after=20", f"{timeout_s:.0f}", *command]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            limited, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if "time: " in line:  # progress bars may precede it on the same line
                print(line[line.index("time: ") :].rstrip(), flush=True)
            elif line.startswith(("error", "Traceback")):
                print(line.rstrip(), flush=True)
        rc = proc.wait()
    return rc, rc in (124, 137)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8091)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--trainer", default="gpu", help="trainer config: gpu | cpu | ...")
    parser.add_argument("--data-root", default=None, help="default /tmp/imgcap_flickr_like_<N>")
    parser.add_argument("--work-dir", default=None, help="run + cache; default a new /tmp folder")
    parser.add_argument("--out", default=os.environ.get("OUT") or None)
    parser.add_argument("--workers", type=int, default=None, help="generator processes")
    parser.add_argument(
        "--budget", type=float, default=570, help="seconds for the whole script (cut off after)"
    )
    parser.add_argument("overrides", nargs="*", help="more train.py overrides (after --)")
    args = parser.parse_args()
    t0 = time.monotonic()

    from imgcap.data.flickr_like import generate_flickr_like, is_complete

    data_root = Path(args.data_root or f"/tmp/imgcap_flickr_like_{args.images}")
    reused = is_complete(data_root, args.images)
    generate_flickr_like(data_root, args.images, workers=args.workers, overwrite=True)
    generate_s = time.monotonic() - t0
    print(
        f"gpu_trial: {args.images} images in {data_root} "
        f"({'reused' if reused else f'generated in {generate_s:.1f} s'})",
        flush=True,
    )

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="imgcap_gpu_trial_"))
    run_dir, cache_dir = work / "run", work / "cache"
    for folder in (run_dir, cache_dir):  # a fresh run and a cache built inside the trial
        shutil.rmtree(folder, ignore_errors=True)
    out = Path(args.out) if args.out else work
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        "experiment=flickr8k",
        f"trainer={args.trainer}",
        "model.encoder.weights=null",
        "logger=csv",
        "callbacks.early_stopping=null",
        f"data.root={data_root}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.check_val_every_n_epoch=1",
        "test=true",
        f"data.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]
    command = [sys.executable, "train.py", *overrides]
    print("gpu_trial: " + " ".join(command), flush=True)
    timeout_s = max(30.0, args.budget - (time.monotonic() - t0) - 25)
    start = time.time()
    rc, cut_off = run_logged(command, out / "trial.log", timeout_s)
    exited = time.time()

    metrics_path, timings_path = run_dir / "metrics.json", run_dir / "timings.json"
    completed = rc == 0 and metrics_path.is_file()
    metrics = json.loads(metrics_path.read_text()) if completed else {}
    if completed:
        wall_s = metrics_path.stat().st_mtime - start
        timings = metrics.get("timings") or {}
    else:
        wall_s = None
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for name in ("metrics.json", "timings.json"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, out / name)

    breakdown = dict(timings.get("seconds") or {})
    if timings:
        breakdown["total_seconds"] = timings.get("total_seconds")
    result = {
        "gpu_trial_minutes": round(wall_s / 60, 2) if wall_s is not None else None,
        "gpu_trial_breakdown": breakdown or None,
        "completed": completed,
        "cut_off": cut_off and not completed,
        "exit_status": rc,
        "device": device_name(args.trainer),
        "images": args.images,
        "epochs": args.epochs,
        "epochs_done": timings.get("epochs"),
        "validations_done": timings.get("validations"),
        "wall_to_metrics_s": round(wall_s, 1) if wall_s is not None else None,
        "wall_to_exit_s": round(exited - start, 1),
        "generate_seconds": None if reused else round(generate_s, 1),
        "data_reused": reused,
        "command": "python train.py " + " ".join(overrides),
        "test_scores": {k: v for k, v in metrics.items() if k.startswith("test/")},
        "scoring": metrics.get("scoring"),
    }
    write_json(out / "gpu_trial.json", result)

    print(f"gpu_trial: device {result['device']}, exit status {rc}", flush=True)
    if completed:
        print(
            f"gpu_trial: wall from the command to metrics.json: {wall_s:.1f} s ({wall_s / 60:.2f} min)"
        )
    else:
        why = "cut off" if cut_off else "failed"
        print(
            f"gpu_trial: {why} after {exited - start:.1f} s; no metrics.json (see {out / 'trial.log'})"
        )
    for phase, seconds in breakdown.items():
        print(f"  {phase:<22} {seconds:8.1f} s" if seconds is not None else f"  {phase}")
    print(json.dumps(result))
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(main())
