"""Shared plumbing of the entry scripts: one clear line for user mistakes, not a traceback."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imgcap.errors import ImgcapError


def prepare_environment(script: str) -> None:
    """Anchor ``paths.root_dir`` at the scripts' folder whatever the working directory is."""
    os.environ.setdefault("PROJECT_ROOT", str(Path(script).resolve().parent))
    register_resolvers()
    # Noise that says nothing actionable to a user of the scripts.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")


_RUN_DIRS: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """``path`` if it does not exist yet, else ``path-2``, ``path-3``...: the directory is
    created here (``mkdir`` is atomic), so concurrent runs can never get the same one. The
    answer is remembered per process: Hydra resolves the run directory more than once."""
    if path in _RUN_DIRS:
        return _RUN_DIRS[path]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            os.mkdir(candidate)
            break
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"
    _RUN_DIRS[path] = candidate
    return candidate


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", unique_dir)


def one_line(err: BaseException) -> str:
    """The message of an ImgcapError, as one line. An error raised in a DataLoader worker comes
    back wrapped in torch's "Caught ... Original Traceback" text: its last line is the message."""
    text = str(err).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1].strip()
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    for p in (prefix, f"{type(err).__name__}: "):
        if last.startswith(p):
            return last[len(p) :]
    return last


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task; an ImgcapError becomes one ``error: ...`` line on stderr and exit status 2.

    A run stopped by SIGTERM/SIGINT has printed its resume line already and exits with
    128 + the signal number (:class:`~imgcap.errors.Interrupted` is a SystemExit)."""
    try:
        return task(cfg)
    except ImgcapError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
