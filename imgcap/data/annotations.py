"""Dataset annotations: pick the reader for a root, read captions, decide the splits.

The on-disk formats are readers in a registry (:mod:`imgcap.data.readers`); this module only
asks it. ``data.layout=auto`` detects the format under ``data.root`` by trying the readers in
their documented order (Kaggle ``captions.txt``, the original ``Flickr8k.token.txt``, Karpathy's
``dataset_*.json``); ``data.layout=<name>`` names one. ``data.annotations_file`` and
``data.image_dir`` point at the annotation file and the image folder when they are not where
the reader looks (relative paths are under ``data.root``).

Splits, in this order of precedence: the split the annotation file carries (Karpathy's json),
else a ``dataset_flickr8k.json`` next to another caption file, else the official Flickr8k lists,
else a seeded split.

Every problem a user can fix is raised as a one-line :class:`~imgcap.errors.DataError` (or
:class:`~imgcap.errors.ConfigError` for config values) that names the file (and line) and says
what to do.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from imgcap.data.known_datasets import missing_dataset_message
from imgcap.data.readers import IMAGE_DIR_NAMES, SPLITS, Reader, get_reader, readers
from imgcap.data.readers.base import read_text
from imgcap.data.readers.kaggle_csv import KAGGLE_FILE, read_kaggle_captions
from imgcap.data.readers.karpathy_json import KARPATHY_FILE, find_karpathy_json, read_karpathy_json
from imgcap.data.readers.token_file import TOKEN_FILE, read_token_file
from imgcap.errors import DataError

__all__ = [
    "IMAGE_DIR_NAMES",
    "KAGGLE_FILE",
    "KARPATHY_FILE",
    "MISSING_DATASET_HINT",
    "SPLITS",
    "SPLIT_FILES",
    "TOKEN_FILE",
    "Annotations",
    "detect_layout",
    "find_karpathy_json",
    "find_split_lists",
    "load_annotations",
    "read_kaggle_captions",
    "read_karpathy_json",
    "read_split_lists",
    "read_text",
    "read_token_file",
    "seeded_split",
    "split_sizes",
]

# Official list names -> our split names ("dev" is the validation split).
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
# Full Flickr8k: 8091 images split 6000/1000/1000 (the official lists leave 91 images out).
_FULL_SIZE, _FULL_TRAIN, _FULL_EVAL = 8091, 6000, 1000

MISSING_DATASET_HINT = (
    'download Flickr8k from Kaggle ("adityajn105/flickr8k") or the original release, unzip it '
    "into data/flickr8k or pass data.root=..., or run `python train.py experiment=demo` for the "
    "offline demo on generated data"
)


@dataclass
class Annotations:
    """Captions and splits of one dataset root.

    ``captions`` maps an image id to its raw caption strings, exactly as in the annotation file
    (outer white space stripped). An image id is the image's path relative to ``image_dir``: the
    file name in a flat folder (``"123_abc.jpg"``), ``folder/name`` in a nested tree
    (``"val2014/COCO_val2014_000000000042.jpg"``); :meth:`image_path` is the file. ``splits``
    maps ``train/val/test`` to image ids, each present in ``captions`` and under ``image_dir``.
    ``layout`` is the name of the reader that read ``caption_file``. ``dataset_ids``: the
    dataset's own integer id of each image where the annotation file records one (COCO's
    ``cocoid``), for COCO-format files (see :mod:`imgcap.api.coco`).
    """

    image_dir: Path
    captions: dict[str, list[str]]
    splits: dict[str, list[str]]
    layout: str = "kaggle"
    caption_file: Path | None = None
    split_source: str = "seeded"
    skipped: list[str] = field(default_factory=list)
    # The Karpathy json or the folder of the official lists the splits come from (None: seeded).
    split_file: Path | None = None
    dataset_ids: dict[str, int] = field(default_factory=dict)

    def image_path(self, image_id: str) -> Path:
        """The file of ``image_id``."""
        return self.image_dir / image_id

    def split_info(self) -> dict[str, object]:
        """Where the splits come from and their sizes: printed at start, kept in metrics.json."""
        return {
            "split_source": self.split_source,
            "split_file": str(self.split_file) if self.split_file else None,
            "split_sizes": {s: len(ids) for s, ids in self.splits.items()},
            "caption_file": str(self.caption_file) if self.caption_file else None,
        }

    def describe(self) -> str:
        """One line, e.g. ``split: karpathy (dataset_flickr8k.json), 6000/1000/1000 ...``."""
        sizes = "/".join(str(len(self.splits.get(s, []))) for s in SPLITS)
        where = f" ({self.split_file})" if self.split_file else " (data.split_seed)"
        return (
            f"split: {self.split_source}{where}, {sizes} train/val/test images; "
            f"captions: {self.caption_file}"
        )


def _under(root: Path, path: str | Path) -> Path:
    """``path`` with ``~`` expanded; a relative path is taken under ``root``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def _check_root(root: Path) -> None:
    if not root.is_dir() or not any(root.iterdir()):
        what = (
            "does not exist"
            if not root.exists()
            else "is empty"
            if root.is_dir()
            else "is not a folder"
        )
        raise DataError(f"dataset root {root} {what}: {MISSING_DATASET_HINT}")


def _pick_reader(
    root: Path, layout: str, annotations_file: str | Path | None
) -> tuple[Reader, Path]:
    """The reader and its annotation file, by name, by the given file, or by detection."""
    if annotations_file is not None:
        path = _under(root, annotations_file)
        if not path.is_file() and (known := missing_dataset_message(root, path)) is not None:
            raise DataError(known)  # data=flickr30k / coco_karpathy without their files
        if not path.is_file():
            raise DataError(
                f"data.annotations_file: {path} does not exist; fix the path (relative paths "
                "are taken under data.root)"
            )
        if layout != "auto":
            return get_reader(layout), path
        for reader in readers():
            if reader.claims(path):
                return reader, path
        names = ", ".join(r.name for r in readers())
        raise DataError(
            f"data.annotations_file: cannot tell the format of {path}; set data.layout to one "
            f"of {names}"
        )
    _check_root(root)
    if layout != "auto":
        reader = get_reader(layout)
        path = reader.find(root)
        if path is None:
            raise DataError(
                f"data.layout={layout}: no {reader.expects} under {root}; set "
                "data.annotations_file=... or data.layout=auto"
            )
        return reader, path
    for reader in readers():
        path = reader.find(root)
        if path is not None:
            return reader, path
    *others, last = [r.expects for r in readers()]
    expected = f"{', '.join(others)} or {last}" if others else last
    raise DataError(f"no captions found under {root} (expected {expected}): {MISSING_DATASET_HINT}")


def detect_layout(
    root: str | Path,
    layout: str = "auto",
    annotations_file: str | Path | None = None,
    image_dir: str | Path | None = None,
) -> tuple[str, Path, Path]:
    """Return ``(reader name, annotation file, image folder)`` for ``root``.

    ``layout="auto"`` tries the registered readers in detection order (see
    :mod:`imgcap.data.readers`); a reader name (or alias) uses that reader.
    ``annotations_file`` / ``image_dir`` override where the reader would look (relative paths
    are under ``root``). Raises a one-line :class:`DataError` (:class:`ConfigError` for an
    unknown ``layout``).
    """
    root = Path(root).expanduser()
    reader, path = _pick_reader(root, str(layout), annotations_file)
    if image_dir is not None:
        folder = _under(root, image_dir)
        if not folder.is_dir():
            raise DataError(
                f"data.image_dir: {folder} is not a folder; fix the path (relative paths are "
                "taken under data.root)"
            )
    else:
        folder = reader.find_image_dir(root)
        if folder is None:
            raise DataError(
                f"no image folder under {root} (expected one of "
                f"{', '.join(reader.image_dirs[:2])}/, or set data.image_dir): {MISSING_DATASET_HINT}"
            )
    return reader.name, path, folder


# ----------------------------------------------------------------------------------- splits


def find_split_lists(root: Path) -> dict[str, Path] | None:
    """The official split lists, looked for in ``root`` and ``root/Flickr8k_text``; all or none."""
    for folder in (root, root / "Flickr8k_text"):
        paths = {s: folder / name for s, name in SPLIT_FILES.items()}
        if all(p.is_file() for p in paths.values()):
            return paths
    return None


def read_split_lists(paths: dict[str, Path], known: set[str] | dict) -> dict[str, list[str]]:
    """Read the three lists; every name must be a captioned image, none in two splits."""
    splits: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for split, path in paths.items():
        names = []
        with io.StringIO(read_text(path)) as f:
            for line_no, line in enumerate(f, start=1):
                name = line.strip()
                if not name:
                    continue
                if name not in known:
                    raise DataError(
                        f"{path}:{line_no}: split list names {name}, which has no captions or no "
                        "image; fix the list or restore the image"
                    )
                if name in seen:
                    raise DataError(
                        f"{path}:{line_no}: {name} is already in the {seen[name]} split"
                    )
                seen[name] = split
                names.append(name)
        splits[split] = names
    return splits


def split_sizes(n: int) -> tuple[int, int, int]:
    """Sizes of the seeded split: 6000/1000/1000 on the full 8091 images, proportional below.

    Like the official lists, what does not fit the proportions (91 of 8091) is left out. Tiny
    sets still get at least one validation and one test image when they have 3 or more.
    """
    if n >= 3:
        n_eval = max(1, round(n * _FULL_EVAL / _FULL_SIZE))
        n_train = min(n - 2 * n_eval, max(1, round(n * _FULL_TRAIN / _FULL_SIZE)))
        return n_train, n_eval, n_eval
    return n, 0, 0


def seeded_split(image_ids: list[str], seed: int = 0) -> dict[str, list[str]]:
    """Split ``image_ids`` by a keyed hash of each name.

    Sorting by ``sha256(f"{seed}:{name}")`` is a seeded permutation that depends on nothing but
    the names and the seed (not dict order, NumPy's RNG streams or the Python version).
    """
    order = sorted(
        sorted(image_ids), key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest()
    )
    n_train, n_val, n_test = split_sizes(len(order))
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val : n_train + n_val + n_test],
    }


# ---------------------------------------------------------------------------------- entry point


def load_annotations(
    root: str | Path,
    split_seed: int = 0,
    layout: str = "auto",
    annotations_file: str | Path | None = None,
    image_dir: str | Path | None = None,
) -> Annotations:
    """Find the reader for ``root`` (see :func:`detect_layout`) and return captions and splits.

    Captions come from the reader's annotation file. Splits follow one precedence whatever that
    file is, so that scores stay comparable with published ones: the split the file carries
    (Karpathy's json, ``split_source="karpathy"``), else a ``dataset_flickr8k.json`` in ``root``
    (``"karpathy"``), else the official split lists (``"official"``), else
    :func:`seeded_split` (``"seeded"``).
    """
    root = Path(root).expanduser()
    name, caption_file, folder = detect_layout(root, layout, annotations_file, image_dir)
    result = get_reader(name).read(caption_file, folder)
    captions = result.captions
    if not captions:
        raise DataError(f"{caption_file}: no captions found; {MISSING_DATASET_HINT}")

    if result.splits is not None:
        splits = {s: list(result.splits.get(s, [])) for s in SPLITS}
        source, split_file = result.split_source or name, caption_file
    elif (karpathy := find_karpathy_json(root)) is not None:
        splits = read_karpathy_json(karpathy, folder)[1]
        for split, names in splits.items():
            missing = [n for n in names if n not in captions]
            if missing:
                raise DataError(
                    f"{karpathy}: {len(missing)} {split} image(s) have no captions in "
                    f"{caption_file} (first: {missing[0]}); use matching files"
                )
        source, split_file = "karpathy", karpathy
    elif (lists := find_split_lists(root)) is not None:
        splits, source = read_split_lists(lists, captions), "official"
        split_file = lists["train"].parent
    else:
        splits, source, split_file = seeded_split(list(captions), split_seed), "seeded", None
    if not splits["train"]:
        raise DataError(f"{root}: the training split is empty; check the split lists")
    return Annotations(
        folder,
        captions,
        splits,
        name,
        caption_file,
        source,
        list(result.skipped),
        split_file,
        dict(result.dataset_ids or {}),
    )
