"""Karpathy's split files: ``dataset_flickr8k.json``, ``dataset_flickr30k.json``,
``dataset_coco.json``.

Format: ``{"images": [{"filename", "split", "sentences": [{"raw", "tokens"}], "filepath"?}]}``.
``filepath`` (COCO: ``train2014`` / ``val2014``) is the folder of the image under the image root,
so the image id is ``filepath/filename`` and two files of the same name in different folders stay
two images. Split labels: ``train``, ``val``, ``test``, and ``restval`` (the COCO images outside
Karpathy's 5000/5000 val/test that are not in ``train2014``), which counts as train as in the
published results.

Images live under the first existing folder of :data:`IMAGE_DIRS`, else under the root itself
(a COCO tree: ``root/train2014``, ``root/val2014``, ``root/dataset_coco.json``).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from imgcap.data.readers import Reader, ReadResult, register_reader
from imgcap.data.readers.base import IMAGE_DIR_NAMES, SPLITS, first_file, listdir, read_text
from imgcap.errors import DataError

KARPATHY_FILE = "dataset_flickr8k.json"
KARPATHY_FILES = (KARPATHY_FILE, "dataset_flickr30k.json", "dataset_coco.json")
IMAGE_DIRS = (*IMAGE_DIR_NAMES, "flickr30k-images", "flickr30k_images")
# Karpathy's label -> our split.
SPLIT_LABELS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def find_karpathy_json(root: Path) -> Path | None:
    """Karpathy's ``dataset_flickr8k.json`` in ``root`` or ``root/Flickr8k_text``."""
    return first_file(root / KARPATHY_FILE, root / "Flickr8k_text" / KARPATHY_FILE)


def _image_id(path: Path, i: int, filepath: object, filename: object) -> str:
    """``filepath/filename`` (or ``filename``) as a safe relative POSIX path."""
    if not isinstance(filename, str) or not isinstance(filepath, str | None):
        raise DataError(f"{path}: images[{i}] has a non-text filename or filepath; fix the file")
    rel = PurePosixPath(filepath or ".", filename)
    if not filename or rel.is_absolute() or ".." in rel.parts or "\\" in str(rel):
        raise DataError(
            f"{path}: images[{i}] has filepath/filename {str(rel)!r}, which is not a path "
            "inside the image folder; fix the file"
        )
    return rel.as_posix()


def read_karpathy_json(
    path: Path, image_dir: Path
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Read a Karpathy split file into ``(captions, splits)``; ``restval`` counts as train.

    Image ids are ``filepath/filename`` when an entry has a ``filepath``, else ``filename``;
    every image must exist under ``image_dir``.
    """
    captions, splits, _ = _read_karpathy(path, image_dir)
    return captions, splits


def _read_karpathy(
    path: Path, image_dir: Path
) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, int]]:
    """:func:`read_karpathy_json`, plus each image's ``cocoid`` where the file has one."""
    try:
        data = json.loads(read_text(path))
        entries = data["images"]
        if not isinstance(entries, list):
            raise TypeError("'images' is not a list")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a valid Karpathy split file ({e}); re-download it") from None
    present: dict[str, set[str]] = {}  # folder (relative) -> file names, listed once each
    captions: dict[str, list[str]] = {}
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    first_index: dict[str, int] = {}
    coco_ids: dict[str, int] = {}
    for i, entry in enumerate(entries):
        try:
            filename, label = entry["filename"], entry["split"]
            raws = [s["raw"].strip() for s in entry["sentences"]]
            filepath = entry.get("filepath")
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: images[{i}] lacks field {e}; re-download the file") from None
        if not isinstance(label, str):
            raise DataError(f"{path}: images[{i}] has a non-text filename or split; fix the file")
        image = _image_id(path, i, filepath, filename)
        split = SPLIT_LABELS.get(label)
        if split is None:
            raise DataError(
                f"{path}: images[{i}] ({image}) has unknown split {label!r} "
                f"(expected one of {', '.join(SPLIT_LABELS)})"
            )
        if image in first_index:
            raise DataError(
                f"{path}: images[{i}] repeats {image} (first at images[{first_index[image]}]); "
                "fix the file"
            )
        folder = PurePosixPath(image).parent.as_posix()
        if folder not in present:
            present[folder] = listdir(image_dir / folder)
        if PurePosixPath(image).name not in present[folder]:
            hint = (
                f" (or set data.image_dir to the folder that holds {folder}/)"
                if folder != "."
                else ""
            )
            raise DataError(
                f"{path}: images[{i}]: image {image} is listed but missing from {image_dir}; "
                f"re-download/unzip the images{hint}"
            )
        if not raws or not all(raws):
            raise DataError(f"{path}: images[{i}] ({image}) has an empty caption; fix the file")
        first_index[image] = i
        captions[image] = list(dict.fromkeys(raws))
        splits[split].append(image)
        cocoid = entry.get("cocoid")
        if isinstance(cocoid, int) and not isinstance(cocoid, bool):
            coco_ids[image] = cocoid
    return captions, splits, coco_ids


@register_reader
class KarpathyJSON(Reader):
    name = "karpathy"
    aliases = ("karpathy_json",)
    priority = 30
    expects = "dataset_{flickr8k,flickr30k,coco}.json"
    image_dirs = IMAGE_DIRS

    def find(self, root: Path) -> Path | None:
        return find_karpathy_json(root) or first_file(*(root / n for n in KARPATHY_FILES[1:]))

    def claims(self, path: Path) -> bool:
        return path.suffix.lower() == ".json"

    def find_image_dir(self, root: Path) -> Path | None:
        return super().find_image_dir(root) or root

    def read(self, path: Path, image_dir: Path) -> ReadResult:
        captions, splits, coco_ids = _read_karpathy(path, image_dir)
        return ReadResult(
            captions, splits=splits, split_source="karpathy", dataset_ids=coco_ids or None
        )
