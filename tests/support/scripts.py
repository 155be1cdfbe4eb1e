"""Running the project's entry scripts (train.py, evaluate.py, caption.py) as a user does: a
fresh Python process, W&B offline and silent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Read when the tests are imported, after tests/conftest.py has set the thread limits.
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def run_script(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd`` with ENV; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def error_lines(stderr: str) -> list[str]:
    """The ``error: ...`` lines a script printed."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
