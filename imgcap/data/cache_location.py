"""Where the vocabulary and feature caches live, and which dataset a cache belongs to.

Caches never go into the dataset folder unless ``data.cache_dir`` points there: a dataset may
sit on a read-only or shared disk, and a cache is a derived artefact of one machine's runs. The
training config puts them under ``${paths.cache_dir}`` (``<project>/.cache/imgcap``); a data
module built without a ``cache_dir`` (the Python API) uses the user's cache directory,
``$XDG_CACHE_HOME/imgcap`` (``~/.cache/imgcap`` when that variable is unset).

Since one cache folder serves every dataset, a cache key names the dataset it was made from
(:func:`dataset_identity`): two datasets whose images share file names never read each other's
features.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Where versions before the shared cache folder wrote their caches: ``<data.root>/<this>``.
LEGACY_CACHE_DIR_NAME = ".imgcap_cache"


def default_cache_dir() -> Path:
    """The user's cache folder for imgcap: ``$XDG_CACHE_HOME/imgcap`` or ``~/.cache/imgcap``."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "imgcap"


def dataset_identity(image_dir: Path, image_ids: Sequence[str]) -> dict[str, str]:
    """What tells this dataset's images apart from another's with the same file names.

    ``{"image_dir": <resolved folder>, "files": <sha256 over each image's id, size and
    modification time>}``: replacing, editing or moving the images changes it, so a cache
    made from other pixels is never trusted. A file that cannot be read counts as absent
    (the image check reports it before any cache is built).
    """
    digest = hashlib.sha256()
    folder = Path(image_dir).expanduser().resolve()
    for image_id in image_ids:
        try:
            st = (folder / image_id).stat()
            digest.update(f"{image_id}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{image_id}\0missing\n".encode())
    return {"image_dir": str(folder), "files": digest.hexdigest()}


def legacy_cache_notice(root: Path, cache_dir: Path) -> str | None:
    """One line naming caches an earlier version left in the dataset folder, which are no
    longer read (their keys lack the dataset's identity), or None when there are none."""
    legacy = Path(root).expanduser() / LEGACY_CACHE_DIR_NAME
    try:
        if not legacy.is_dir() or legacy.resolve() == Path(cache_dir).expanduser().resolve():
            return None
        size = sum(p.stat().st_size for p in legacy.iterdir() if p.is_file())
    except OSError:
        return None
    return (
        f"{legacy} holds caches of an earlier imgcap version ({size / 1e6:.1f} MB), no longer "
        f"used: caches now live in {cache_dir} (data.cache_dir); delete that folder to free the space"
    )
