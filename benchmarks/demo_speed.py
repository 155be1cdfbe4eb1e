"""The offline demo's time now against an earlier commit, side by side on this machine.

    python benchmarks/demo_speed.py [--baseline e4cb443] [--threads N]

Both run ``python train.py experiment=demo`` with this interpreter, on one shapes set generated
beforehand (so neither pays for generating it), one after the other. Prints, for each, the wall
seconds, the CPU seconds (user + system of the run and its children: steadier than wall time on
a busy machine) and the test BLEU-4, then the ratios now / baseline. The baseline is checked out
in a temporary git worktree, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_demo(tree: Path, root: Path, shapes: Path, env: dict[str, str]) -> dict[str, float]:
    """One demo run from ``tree``: wall and CPU seconds, and its test BLEU-4."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=demo",
            f"paths.root_dir={root}",
            f"data.root={shapes}",
            "print_config=false",
            "callbacks.progress_bar=null",
        ],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (metrics,) = root.glob("outputs/train/runs/*/*/metrics.json")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "test_bleu4": json.loads(metrics.read_text())["test/BLEU-4"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="e4cb443", help="commit to compare with")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        base = work / "base"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(base), args.baseline],
            cwd=REPO,
            check=True,
        )
        try:
            from imgcap.data.shapes import generate_shapes

            shapes = generate_shapes(work / "shapes", num_images=2000, image_size=64, seed=0)
            now = run_demo(REPO, work / "now", shapes, env)
            old = run_demo(base, work / "baseline", shapes, env)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False
            )
    print(f"{os.cpu_count()} cores, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'default')}")
    for label, r in (("now", now), (args.baseline, old)):
        print(
            f"{label:>10}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, test BLEU-4 {r['test_bleu4']:.4f}"
        )
    print(f"demo_wall_vs_{args.baseline} {now['wall_s'] / old['wall_s']:.3f}")
    print(f"demo_cpu_vs_{args.baseline} {now['cpu_s'] / old['cpu_s']:.3f}")


if __name__ == "__main__":
    main()
