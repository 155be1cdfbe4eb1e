"""Flickr8k annotations: find the layout under ``root``, read captions, decide the splits.

Three on-disk forms are recognised (checked in this order):

* ``kaggle``:   ``Images/*.jpg`` + ``captions.txt`` (CSV, header ``image,caption``)
* ``original``: ``Flicker8k_Dataset/`` (sic) or ``Images/`` + ``Flickr8k_text/Flickr8k.token.txt``
* ``karpathy``: ``dataset_flickr8k.json`` next to ``Images/`` or ``Flicker8k_Dataset/``

Splits: Karpathy's json, else the official lists, else a seeded split, whatever the layout.

Every problem a user can fix is raised as a one-line :class:`~imgcap.errors.DataError` that names
the file (and line) and says what to do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from imgcap.errors import DataError

SPLITS = ("train", "val", "test")
# Official list names -> our split names ("dev" is the validation split).
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_DIR_NAMES = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "images")
TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_FILE = "captions.txt"
KARPATHY_FILE = "dataset_flickr8k.json"
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

    ``captions`` maps an image file name (``"123_abc.jpg"``) to its raw caption strings, exactly
    as in the annotation file (outer white space stripped). ``splits`` maps ``train/val/test``
    to image file names, each present in ``captions`` and in ``image_dir``.
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


def _find_image_dir(root: Path) -> Path | None:
    for name in IMAGE_DIR_NAMES:
        if (root / name).is_dir():
            return root / name
    return None


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def detect_layout(root: str | Path) -> tuple[str, Path, Path]:
    """Return ``(layout, caption_file, image_dir)`` for ``root`` or raise a :class:`DataError`."""
    root = Path(root)
    if not root.is_dir() or not any(root.iterdir()):
        what = (
            "does not exist"
            if not root.exists()
            else "is empty"
            if root.is_dir()
            else "is not a folder"
        )
        raise DataError(f"dataset root {root} {what}: {MISSING_DATASET_HINT}")
    image_dir = _find_image_dir(root)
    candidates = [
        ("kaggle", _first(root / KAGGLE_FILE)),
        ("original", _first(root / "Flickr8k_text" / TOKEN_FILE, root / TOKEN_FILE)),
        ("karpathy", _first(root / KARPATHY_FILE, root / "Flickr8k_text" / KARPATHY_FILE)),
    ]
    found = [(name, path) for name, path in candidates if path is not None]
    if not found:
        raise DataError(
            f"no captions found under {root} (expected {KAGGLE_FILE}, Flickr8k_text/{TOKEN_FILE} "
            f"or {KARPATHY_FILE}): {MISSING_DATASET_HINT}"
        )
    if image_dir is None:
        raise DataError(
            f"no image folder under {root} (expected one of {', '.join(IMAGE_DIR_NAMES[:2])}/): "
            f"{MISSING_DATASET_HINT}"
        )
    layout, caption_file = found[0]
    return layout, caption_file, image_dir


# ----------------------------------------------------------------------------- caption readers


def read_text(path: Path) -> str:
    """A text file as UTF-8, with a leading byte-order mark (Excel's "UTF-8 with BOM") accepted.

    A byte that is not UTF-8 is a one-line DataError naming the file, line and column."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: byte 0x{data[e.start]:02x} at column {column} is not UTF-8 text; "
            "save the file as UTF-8 (or fix this line)"
        ) from None


class _Duplicates:
    """Counts caption rows repeated verbatim for the same image, for one warning per file."""

    def __init__(self, path: Path) -> None:
        self.path, self.count, self.first = path, 0, ""

    def seen(self, captions: list[str], caption: str, image: str, line: int) -> bool:
        if caption not in captions:
            return False
        self.count += 1
        self.first = self.first or f"line {line}, {image}"
        return True

    def warn(self) -> None:
        if self.count:
            warnings.warn(
                f"{self.path}: {self.count} duplicate caption row(s) ignored (the same caption "
                f"twice for one image; first at {self.first})",
                UserWarning,
                stacklevel=3,
            )


def read_kaggle_captions(path: Path, image_dir: Path) -> dict[str, list[str]]:
    """Read ``captions.txt`` (CSV ``image,caption``). Every listed image must exist."""
    captions: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    duplicates = _Duplicates(path)
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise DataError(
                f"{path}:1: cannot parse the CSV header ({e}); expected 'image,caption'"
            ) from None
        if header is None or [h.strip().lower() for h in header] != ["image", "caption"]:
            raise DataError(
                f"{path}:1: expected the header 'image,caption', got {','.join(header or [])!r}; "
                "is this the Kaggle Flickr8k captions.txt?"
            )
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(
                    f"{path}:{reader.line_num}: malformed CSV row ({e}); fix or delete this line"
                ) from None
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines (e.g. a trailing newline) carry nothing
            if len(row) != 2:
                raise DataError(
                    f"{path}:{line}: expected 2 fields 'image,caption', got {len(row)}; "
                    'quote captions that contain commas ("...") or fix this line'
                )
            image, caption = row[0].strip(), row[1].strip()
            if not image:
                raise DataError(f"{path}:{line}: empty image name; fix or delete this line")
            if not caption:
                raise DataError(
                    f"{path}:{line}: empty caption for {image}; fix or delete this line"
                )
            if not duplicates.seen(captions.get(image, []), caption, image, line):
                captions.setdefault(image, []).append(caption)
            first_line.setdefault(image, line)
    duplicates.warn()
    present = _listdir(image_dir)
    for image, line in first_line.items():
        if image not in present:
            raise DataError(
                f"{path}:{line}: image {image} is listed but missing from {image_dir}; "
                "re-download/unzip the images or delete its rows"
            )
    return captions


def read_token_file(path: Path, image_dir: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Read ``Flickr8k.token.txt`` (``IMG.jpg#N<TAB>caption``).

    Ids without an image file (the full release has ``2258277193_586949ec62.jpg.1``) are dropped
    with a single warning; returns ``(captions, skipped_ids)``.
    """
    captions: dict[str, list[str]] = {}
    duplicates = _Duplicates(path)
    with io.StringIO(read_text(path)) as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if "\t" not in line or "#" not in line.split("\t", 1)[0]:
                raise DataError(
                    f"{path}:{line_no}: expected 'IMAGE.jpg#N<TAB>caption', got {line[:60]!r}; "
                    "fix or delete this line"
                )
            key, caption = line.split("\t", 1)
            image = key.rsplit("#", 1)[0].strip()
            caption = caption.strip()
            if not caption:
                raise DataError(
                    f"{path}:{line_no}: empty caption for {image}; fix or delete this line"
                )
            if not duplicates.seen(captions.get(image, []), caption, image, line_no):
                captions.setdefault(image, []).append(caption)
    duplicates.warn()
    present = _listdir(image_dir)
    skipped = sorted(i for i in captions if i not in present)
    if skipped:
        warnings.warn(
            f"{path}: {len(skipped)} caption id(s) have no image in {image_dir} and are skipped "
            f"(first: {', '.join(skipped[:3])})",
            UserWarning,
            stacklevel=2,
        )
        for image in skipped:
            del captions[image]
    return captions, skipped


def read_karpathy_json(
    path: Path, image_dir: Path
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Read Karpathy's ``dataset_flickr8k.json``; ``restval`` counts as train."""
    try:
        data = json.loads(read_text(path))
        entries = data["images"]
        if not isinstance(entries, list):
            raise TypeError("'images' is not a list")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a valid Karpathy split file ({e}); re-download it") from None
    present = _listdir(image_dir)
    captions: dict[str, list[str]] = {}
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, entry in enumerate(entries):
        try:
            name, split = entry["filename"], entry["split"]
            raws = [s["raw"].strip() for s in entry["sentences"]]
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: images[{i}] lacks field {e}; re-download the file") from None
        if not isinstance(name, str) or not isinstance(split, str):
            raise DataError(f"{path}: images[{i}] has a non-text filename or split; fix the file")
        split = "train" if split == "restval" else split
        if split not in splits:
            raise DataError(f"{path}: images[{i}] ({name}) has unknown split {split!r}")
        if name not in present:
            raise DataError(
                f"{path}: images[{i}]: image {name} is listed but missing from {image_dir}; "
                "re-download/unzip the images"
            )
        if not raws or not all(raws):
            raise DataError(f"{path}: images[{i}] ({name}) has an empty caption; fix the file")
        captions[name] = list(dict.fromkeys(raws))
        splits[split].append(name)
    return captions, splits


def _listdir(image_dir: Path) -> set[str]:
    return {p.name for p in image_dir.iterdir()}


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


def find_karpathy_json(root: Path) -> Path | None:
    """Karpathy's ``dataset_flickr8k.json`` in ``root`` or ``root/Flickr8k_text``."""
    return _first(root / KARPATHY_FILE, root / "Flickr8k_text" / KARPATHY_FILE)


def load_annotations(root: str | Path, split_seed: int = 0) -> Annotations:
    """Detect the layout under ``root`` and return its captions and splits.

    Captions come from the detected caption file. Splits follow one precedence whatever that
    file is, so that scores stay comparable with published ones: Karpathy's json when present
    (``split_source="karpathy"``), else the official split lists (``"official"``), else
    :func:`seeded_split` (``"seeded"``).
    """
    root = Path(root).expanduser()
    layout, caption_file, image_dir = detect_layout(root)
    skipped: list[str] = []
    json_splits = None
    if layout == "kaggle":
        captions = read_kaggle_captions(caption_file, image_dir)
    elif layout == "original":
        captions, skipped = read_token_file(caption_file, image_dir)
    else:
        captions, json_splits = read_karpathy_json(caption_file, image_dir)
    if not captions:
        raise DataError(f"{caption_file}: no captions found; {MISSING_DATASET_HINT}")

    karpathy = find_karpathy_json(root)
    lists = find_split_lists(root)
    if karpathy is not None:
        if json_splits is None:
            json_splits = read_karpathy_json(karpathy, image_dir)[1]
            for split, names in json_splits.items():
                missing = [n for n in names if n not in captions]
                if missing:
                    raise DataError(
                        f"{karpathy}: {len(missing)} {split} image(s) have no captions in "
                        f"{caption_file} (first: {missing[0]}); use matching files"
                    )
        splits, source, split_file = json_splits, "karpathy", karpathy
    elif lists is not None:
        splits, source = read_split_lists(lists, captions), "official"
        split_file = lists["train"].parent
    else:
        splits, source, split_file = seeded_split(list(captions), split_seed), "seeded", None
    if not splits["train"]:
        raise DataError(f"{root}: the training split is empty; check the split lists")
    return Annotations(
        image_dir, captions, splits, layout, caption_file, source, skipped, split_file
    )
