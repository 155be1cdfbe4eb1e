"""Shared fixtures: the real Flickr8k sample (optional), a tiny generated shapes set, and the
demo trained once per session; how the suite spreads over pytest-xdist workers.

Parallel runs (``-n`` in pyproject's addopts): each worker gets an equal share of the CPU
threads, and the tests that share an expensive fixture run on one worker, so that it is built
once (see ``pytest_collection_modifyitems``)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def _threads_per_worker() -> int | None:
    """The CPU threads each xdist worker may use (None outside xdist or when the user set
    OMP_NUM_THREADS): workers that each use every core would slow each other down."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, len(os.sched_getaffinity(0)) // workers)


# Set before torch is imported, and inherited by the scripts that the tests start.
_THREADS = _threads_per_worker()
if _THREADS is not None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_THREADS)

import torch  # noqa: E402

from imgcap.data.shapes import generate_shapes  # noqa: E402
from tests.support.scripts import REPO, run_script  # noqa: E402

if "OMP_NUM_THREADS" in os.environ:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Session fixtures that train a model, and the xdist group of the tests that use them.
SHARED_RUNS = {"trained_demo": "demo", "tiny_run": "tiny"}


# tryfirst: xdist reads the groups in its own hook of the same name.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests for ``--dist loadgroup``: those using a shared run in its group, those using a
    module-scoped fixture (a small trained run, generated data) in their module's group. On an
    xdist worker, also order the work longest first (the shared runs, then the slow tests), so
    that no long test starts last."""
    for item in items:
        group = _group_of(item)
        if group is None:
            names = getattr(item, "fixturenames", ())
            group = next((g for name, g in SHARED_RUNS.items() if name in names), None)
            if group is None and _uses_module_fixture(item):
                group = item.module.__name__
            if group is not None:
                item.add_marker(pytest.mark.xdist_group(group))
        if group is not None:
            _tag_with_group(config, item, group)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the same order on every worker
        items.sort(key=_heaviest_first)


def _tag_with_group(config: pytest.Config, item: pytest.Item, group: str) -> None:
    """What xdist does for an ``xdist_group`` mark, done where it fails: loadgroup reads the group
    from a ``@<group>`` suffix of the test id, which xdist 3.8 writes to ``item._nodeid``; pytest
    9 keeps the id in ``item._id`` instead, so the suffix (and with it the grouping) got lost."""
    if not config.getvalue("loadgroup") or not hasattr(item, "_id"):
        return  # no grouping asked for, or a pytest where xdist's own suffix works
    from _pytest.nodeid import NodeId

    item._id = NodeId.parse(f"{item.nodeid}@{group}")


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope == "module"
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )


def _group_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    if marker is None:
        return None
    return str(marker.args[0] if marker.args else marker.kwargs.get("name", "default"))


def _heaviest_first(item: pytest.Item) -> int:
    if _group_of(item) in SHARED_RUNS.values():
        return 0
    return 1 if item.get_closest_marker("slow") else 2


@pytest.fixture(autouse=True)
def _user_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Data modules built without a cache_dir use the user's cache folder: a temporary one here,
    so tests leave nothing in the home directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user_cache")))


@pytest.fixture(scope="session")
def flickr8k_sample() -> Path:
    """The 160-image Flickr8k sample named by IMGCAP_FLICKR8K_SAMPLE (read-only; skip when unset)."""
    value = os.environ.get("IMGCAP_FLICKR8K_SAMPLE")
    if not value:
        pytest.skip("set IMGCAP_FLICKR8K_SAMPLE to the Flickr8k sample folder to run this test")
    path = Path(value).expanduser().resolve()
    if not (path / "Images").is_dir():
        pytest.skip(f"IMGCAP_FLICKR8K_SAMPLE={value} has no Images/ folder")
    return path


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated shapes set (40 images at 32 px, split 32/4/4); treat it as read-only."""
    return generate_shapes(
        tmp_path_factory.mktemp("shapes") / "set", num_images=40, image_size=32, seed=0
    )


@dataclass(frozen=True)
class DemoRun:
    """The demo as ``make demo`` runs it: ``root`` (paths.root_dir; the generated shapes in
    ``root/data/shapes``), ``run`` (its run folder) and ``console`` (the finished process, with
    its stdout and stderr)."""

    root: Path
    run: Path
    console: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``python train.py experiment=demo``, trained once per session for every test that needs
    the demo's model or its console; treat its folders as read-only. The progress bar redraws at
    every batch, so that the console tests see every line a user could."""
    root = tmp_path_factory.mktemp("demo")
    args = [str(REPO / "train.py"), "experiment=demo", f"paths.root_dir={root}"]
    done = run_script([*args, "callbacks.progress_bar.refresh_rate=1"], root, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (root / "outputs" / "train" / "runs").glob("*/*")
    return DemoRun(root, run, done)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY (tests/support/runs.py) trained two epochs with the CSV logger, once per session:
    its run folder (checkpoints, metrics.json, samples), with the generated shapes in
    ``run.parent / "data" / "shapes"``. Treat it as read-only."""
    from imgcap.run import tasks
    from tests.support.hydra_helpers import compose_train
    from tests.support.runs import TINY

    tmp = tmp_path_factory.mktemp("tiny")
    cfg = compose_train(tmp, [*TINY, "trainer.max_epochs=2", "logger=csv"])
    tasks.train(cfg)
    return Path(cfg.paths.output_dir)
