"""The reader contract and the helpers the built-in readers share (text decoding, duplicates).

See :mod:`imgcap.data.readers` for the registry and how to add a reader.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from imgcap.errors import DataError

SPLITS = ("train", "val", "test")
# Image folder names looked for under the dataset root, in this order.
IMAGE_DIR_NAMES = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "images")


@dataclass
class ReadResult:
    """What a reader returns.

    ``captions`` maps each image id (its path relative to the image folder, see
    :mod:`imgcap.data.readers`) to its raw caption strings, outer white space stripped, in file
    order without verbatim repeats. ``splits`` (``train/val/test`` -> image ids, each in
    ``captions``) is set only by formats that carry their own split; ``split_source`` then names
    it (default: the reader's name). ``skipped`` lists ids dropped with a warning.
    ``dataset_ids`` maps image ids to the dataset's own integer ids where the file records them
    (``cocoid`` in Karpathy's COCO json), for COCO-format result files.
    """

    captions: dict[str, list[str]]
    splits: dict[str, list[str]] | None = None
    skipped: list[str] = field(default_factory=list)
    split_source: str | None = None
    dataset_ids: dict[str, int] | None = None


class Reader:
    """One on-disk annotation format. Subclass, set the class attributes, implement
    :meth:`find` and :meth:`read` (and :meth:`claims` to accept explicitly given files), and
    decorate with :func:`imgcap.data.readers.register_reader`."""

    #: the ``data.layout`` value and ``Annotations.layout``
    name: ClassVar[str] = ""
    #: other accepted ``data.layout`` values
    aliases: ClassVar[tuple[str, ...]] = ()
    #: detection order: lower is tried first
    priority: ClassVar[int] = 100
    #: the annotation file(s) it looks for, for "no captions found" messages
    expects: ClassVar[str] = ""
    #: image folders looked for under the root, first existing wins
    image_dirs: ClassVar[tuple[str, ...]] = IMAGE_DIR_NAMES

    def find(self, root: Path) -> Path | None:
        """Detection: the annotation file of this format under ``root``, or None."""
        raise NotImplementedError

    def claims(self, path: Path) -> bool:
        """Whether ``path`` (given as ``data.annotations_file`` with ``data.layout=auto``) is in
        this format. Cheap: a name or a first-line check, never a full parse."""
        return False

    def find_image_dir(self, root: Path) -> Path | None:
        """The image folder under ``root`` (``data.image_dir`` overrides it), or None."""
        return next((root / n for n in self.image_dirs if (root / n).is_dir()), None)

    def read(self, path: Path, image_dir: Path) -> ReadResult:
        """Read ``path``; every returned image must exist under ``image_dir``. Problems the user
        can fix are one-line :class:`~imgcap.errors.DataError` naming the file (and line)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<reader {self.name}>"


# ----------------------------------------------------------------------------- shared helpers


def first_file(*paths: Path) -> Path | None:
    """The first of ``paths`` that is a file."""
    return next((p for p in paths if p.is_file()), None)


def first_line(path: Path, limit: int = 4096) -> str:
    """The first line of ``path`` (BOM and line end stripped; '' when unreadable), for
    :meth:`Reader.claims`."""
    try:
        with open(path, "rb") as f:
            head = f.read(limit)
    except OSError:
        return ""
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")


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


def listdir(folder: Path) -> set[str]:
    """File names in ``folder`` (empty when it does not exist)."""
    try:
        return {p.name for p in folder.iterdir()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


class Duplicates:
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
