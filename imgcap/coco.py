"""COCO caption format: what pycocotools' ``COCO``/``loadRes`` and coco-caption tools read.

``evaluate.py`` writes, for the scored split:

* ``references_coco.json``: the annotations file ``{"info", "licenses", "type": "captions",
  "images": [{"id", "file_name"}], "annotations": [{"id", "image_id", "caption"}]}``;
* ``results_coco.json``: the results file ``[{"image_id", "caption"}]``, one per image.

Image ids are 1-based positions in the split's sorted order of file names (``file_name`` maps
them back), so both files of one split agree and ids are stable across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def image_id_map(image_names: Sequence[str]) -> dict[str, int]:
    """File name -> COCO integer image id (1-based, in sorted name order)."""
    return {name: i for i, name in enumerate(sorted(set(image_names)), start=1)}


def coco_references(
    image_names: Sequence[str], references: Sequence[Sequence[str]], description: str = ""
) -> dict[str, Any]:
    """The COCO captions annotations file for these images and their reference captions."""
    ids = image_id_map(image_names)
    annotations = []
    for name, refs in zip(image_names, references, strict=True):
        for ref in refs:
            annotations.append({"id": len(annotations) + 1, "image_id": ids[name], "caption": ref})
    return {
        "info": {"description": description or "imgcap references"},
        "licenses": [],
        "type": "captions",
        "images": [{"id": i, "file_name": name} for name, i in ids.items()],
        "annotations": annotations,
    }


def coco_results(image_names: Sequence[str], hypotheses: Sequence[str]) -> list[dict[str, Any]]:
    """The COCO results file: one ``{"image_id", "caption"}`` per image."""
    ids = image_id_map(image_names)
    return [
        {"image_id": ids[name], "caption": text}
        for name, text in zip(image_names, hypotheses, strict=True)
    ]
