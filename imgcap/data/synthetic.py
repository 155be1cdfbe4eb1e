"""The generated shapes set on demand (``data.synthetic``): written into ``data.root`` when it
is missing or incomplete, never over a real dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imgcap.data.shapes import META_FILE, generate_shapes, is_complete_shapes_dataset

log = logging.getLogger(__name__)


def ensure_synthetic(root: Path, params: dict[str, Any], quiet: bool = False) -> None:
    """Generate the shapes set into ``root`` unless it is there already, complete with the same
    ``params``; a folder holding other data is left alone (and used as it is)."""
    if is_complete_shapes_dataset(root, **params):
        return
    has_other_data = root.is_dir() and any(root.iterdir()) and not (root / META_FILE).is_file()
    if has_other_data:
        return  # a real dataset lives here: use it, never overwrite it
    if not quiet:
        log.info(f"Generating the shapes dataset into {root} ...")
    generate_shapes(root, overwrite=True, **params)
