"""Annotation readers: one per on-disk format, found by name in a registry.

A reader knows one way a dataset stores its captions: which file to look for under the dataset
root (detection), how to tell that an explicitly given file is in its format, where the images
usually live, and how to read the file into captions (and, for formats that carry one, a split).
:func:`imgcap.data.annotations.load_annotations` asks the registry and never names a format.

Registered readers (``data.layout`` takes the name or an alias; ``auto`` detects):

========  ===============  ========  ======================================================
name      alias            priority  files
========  ===============  ========  ======================================================
kaggle    kaggle_csv       10        ``captions.txt`` (CSV ``image,caption``) + ``Images/``
original  token_file       20        ``Flickr8k_text/Flickr8k.token.txt`` + ``Flicker8k_Dataset/``
karpathy  karpathy_json    30        ``dataset_{flickr8k,flickr30k,coco}.json`` (Karpathy splits)
========  ===============  ========  ======================================================

Detection (``data.layout=auto``) tries the readers in ascending ``priority`` (ties by name) and
takes the first whose :meth:`Reader.find` returns a file, so a Kaggle ``captions.txt`` wins over
a token file or a Karpathy json lying next to it (the generated shapes set is written in the
Kaggle layout and is read by ``kaggle``). With ``data.annotations_file`` set and
``data.layout=auto``, the first reader in the same order whose :meth:`Reader.claims` accepts the
file reads it.

Image ids: every id a reader returns is the image's path relative to the image folder, in POSIX
form: the bare file name in a flat folder (``123_abc.jpg``), ``folder/name`` in a nested tree
(``val2014/COCO_val2014_000000000042.jpg``). Ids are therefore unique even when two folders hold
files of the same name, and ``image_dir / image_id`` is always the file.

Adding a dataset format is one new module in this package, and no edit anywhere else: subclass
:class:`Reader`, decorate it with :func:`register_reader`, and it is discovered (every module of
this package is imported on first use of the registry), detected, and selectable as
``data.layout=<name>``::

    # imgcap/data/readers/my_format.py
    from imgcap.data.readers import ReadResult, Reader, register_reader

    @register_reader
    class MyFormat(Reader):
        name = "my_format"
        priority = 50                     # detection order among the readers
        expects = "annotations.tsv"       # for "no captions found" messages

        def find(self, root):             # root -> its annotation file, or None
            path = root / "annotations.tsv"
            return path if path.is_file() else None

        def read(self, path, image_dir):  # -> captions per image id (+ an optional split)
            ...
            return ReadResult(captions)

A reader defined outside this package registers the same way when its module is imported.
"""

from __future__ import annotations

import importlib
import pkgutil

from imgcap.data.readers.base import IMAGE_DIR_NAMES, SPLITS, Reader, ReadResult
from imgcap.errors import ConfigError

__all__ = [
    "IMAGE_DIR_NAMES",
    "SPLITS",
    "ReadResult",
    "Reader",
    "check_layout",
    "describe_names",
    "get_reader",
    "reader_names",
    "readers",
    "register_reader",
]

_REGISTRY: dict[str, Reader] = {}
_ALIASES: dict[str, str] = {}
_discovered = False


def register_reader(cls: type[Reader]) -> type[Reader]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (and its aliases)."""
    name = cls.name
    assert name and name != "auto", f"{cls.__qualname__} needs a name other than 'auto'"
    for key in (name, *cls.aliases):
        owner = _ALIASES.get(key)
        assert owner is None or type(_REGISTRY[owner]) is cls, (
            f"reader name {key!r} of {cls.__qualname__} is already taken by {owner!r}"
        )
    _REGISTRY[name] = cls()
    for key in (name, *cls.aliases):
        _ALIASES[key] = name
    return cls


def _discover() -> None:
    """Import every module of this package once, so that their readers register."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def readers() -> list[Reader]:
    """All registered readers in detection order (ascending ``priority``, then name)."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda r: (r.priority, r.name))


def reader_names() -> list[str]:
    """Registered reader names in detection order."""
    return [r.name for r in readers()]


def describe_names() -> str:
    """``kaggle (kaggle_csv), original (token_file), ...``: the names ``data.layout`` accepts."""
    parts = []
    for r in readers():
        parts.append(f"{r.name} ({', '.join(r.aliases)})" if r.aliases else r.name)
    return ", ".join(parts)


def get_reader(name: str) -> Reader:
    """The reader registered as ``name`` (or an alias); a one-line ConfigError when unknown."""
    _discover()
    key = _ALIASES.get(str(name))
    if key is None:
        raise ConfigError(
            f"data.layout={name!r} is not a registered annotation reader; use auto or one of: "
            f"{describe_names()}"
        )
    return _REGISTRY[key]


def check_layout(layout: str) -> str:
    """``auto`` or the canonical name of a registered reader (aliases resolved)."""
    return "auto" if str(layout) == "auto" else get_reader(layout).name
