"""Where a run came from: the code (git commit, uncommitted changes), the package versions,
the seed and the command-line overrides. Stored in ``metrics.json`` under ``provenance``."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Distribution names on PyPI -> the keys in metrics.json.
PACKAGES = {
    "imgcap": "imgcap",
    "torch": "torch",
    "torchvision": "torchvision",
    "lightning": "lightning",
    "hydra": "hydra-core",
}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when not installed)."""
    versions: dict[str, str | None] = {}
    for key, dist in PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git at all, or it hangs
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout holding the imgcap code (tracked files
    only: outputs and data do not make it dirty); both None when it is not a git checkout."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def provenance(
    seed: int | None, overrides: list[str], run_dir: str | Path | None = None
) -> dict[str, Any]:
    """The ``provenance`` block of metrics.json. For a resumed run ``overrides`` are those of its
    first start (``.hydra/overrides.yaml``) and ``resumes`` lists each resume
    (``.hydra/resumes.yaml``: time, checkpoint, overrides)."""
    block: dict[str, Any] = {
        "git": git_state(),
        "packages": package_versions(),
        "seed": seed,
        "overrides": list(overrides),
    }
    if run_dir is not None:
        hydra_dir = Path(run_dir) / ".hydra"
        resumes = _yaml_list(hydra_dir / "resumes.yaml")
        if resumes:
            first = _yaml_list(hydra_dir / "overrides.yaml")
            block["overrides"] = first if first is not None else block["overrides"]
            block["resumes"] = resumes
    return block


def _yaml_list(path: Path) -> list[Any] | None:
    if not path.is_file():
        return None
    try:
        from omegaconf import OmegaConf

        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # noqa: BLE001 - a damaged record is left out, not fatal
        return None
    return loaded if isinstance(loaded, list) else None
