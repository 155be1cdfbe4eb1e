"""COCO caption format: what pycocotools' ``COCO``/``loadRes`` and coco-caption tools read.

``evaluate.py`` writes, for the scored split:

* ``references_coco.json``: the annotations file ``{"info", "licenses", "type": "captions",
  "images": [{"id", "file_name"}], "annotations": [{"id", "image_id", "caption", "file_name"}]}``;
* ``results_coco.json``: the results file ``[{"image_id", "caption", "file_name"}]``, one per
  image.

Image ids are the dataset's own where it has them, so results can be scored against the
official annotation files and merged with other tools' results (:func:`image_id_map`): COCO's
``cocoid`` from Karpathy's json, else the number a Flickr or COCO file name carries
(``1000268201_693b08cb0e.jpg`` -> 1000268201, ``COCO_val2014_000000000042.jpg`` -> 42). Only
when some image has none (or two would share one) are all ids 1-based positions in sorted
file-name order. Every record keeps its ``file_name``, and both files of one split use the same
map, so they always agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

# Flickr8k/30k: "<photo id>_<secret>.jpg"; COCO: "COCO_<set>_<12-digit id>.jpg".
_FLICKR_NAME = re.compile(r"^(\d+)_[0-9a-f]+\.jpe?g$", re.IGNORECASE)
_COCO_NAME = re.compile(r"^COCO_[a-z]+\d*_(\d+)\.jpe?g$", re.IGNORECASE)


def id_from_file_name(image_name: str) -> int | None:
    """The dataset id a Flickr or COCO file name carries (its folder ignored), else None."""
    base = PurePosixPath(image_name).name
    found = _FLICKR_NAME.match(base) or _COCO_NAME.match(base)
    return int(found.group(1)) if found else None


def _all_distinct(ids: Mapping[str, int | None], names: Sequence[str]) -> bool:
    values = [ids.get(n) for n in names]
    return all(v is not None for v in values) and len(set(values)) == len(values)


def image_id_map(
    image_names: Sequence[str], dataset_ids: Mapping[str, int] | None = None
) -> dict[str, int]:
    """File name -> COCO integer image id, in sorted name order.

    The first rule that gives every image a distinct id wins, for all images alike (ids of
    one file never mix sources): ``dataset_ids`` (e.g. ``cocoid``), then the id in the file
    name (:func:`id_from_file_name`), then the 1-based position in sorted name order.
    """
    names = sorted(set(image_names))
    if dataset_ids and _all_distinct(dataset_ids, names):
        return {n: int(dataset_ids[n]) for n in names}
    from_names = {n: id_from_file_name(n) for n in names}
    if names and _all_distinct(from_names, names):
        return {n: int(from_names[n]) for n in names}  # type: ignore[arg-type]
    return {name: i for i, name in enumerate(names, start=1)}


def coco_references(
    image_names: Sequence[str],
    references: Sequence[Sequence[str]],
    description: str = "",
    dataset_ids: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The COCO captions annotations file for these images and their reference captions."""
    ids = image_id_map(image_names, dataset_ids)
    annotations = []
    for name, refs in zip(image_names, references, strict=True):
        for ref in refs:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": ids[name],
                    "caption": ref,
                    "file_name": name,
                }
            )
    return {
        "info": {"description": description or "imgcap references"},
        "licenses": [],
        "type": "captions",
        "images": [{"id": i, "file_name": name} for name, i in ids.items()],
        "annotations": annotations,
    }


def coco_results(
    image_names: Sequence[str],
    hypotheses: Sequence[str],
    dataset_ids: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The COCO results file: one ``{"image_id", "caption", "file_name"}`` per image."""
    ids = image_id_map(image_names, dataset_ids)
    return [
        {"image_id": ids[name], "caption": text, "file_name": name}
        for name, text in zip(image_names, hypotheses, strict=True)
    ]
