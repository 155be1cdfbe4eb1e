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
    # Noise that says nothing actionable to a user of the scripts.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task; an ImgcapError becomes one ``error: ...`` line on stderr and exit status 2."""
    try:
        return task(cfg)
    except ImgcapError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
