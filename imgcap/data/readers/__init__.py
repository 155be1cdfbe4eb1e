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

Readers register in :data:`READERS`, a :class:`imgcap.registry.Registry` like the decoders'
and objectives' (names, aliases); the priority order is the readers' own. Adding a dataset
format is one new module in this package, and no edit anywhere else: subclass :class:`Reader`,
decorate it with :func:`register_reader`, and it is discovered (every module of this package is
imported on first use of the registry), detected, and selectable as ``data.layout=<name>``::

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

from imgcap.data.readers.base import IMAGE_DIR_NAMES, SPLITS, Reader, ReadResult
from imgcap.errors import ConfigError
from imgcap.registry import Registry

__all__ = [
    "IMAGE_DIR_NAMES",
    "READERS",
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

#: The readers by name and alias (the registry decoders and objectives use too); every module
#: of this package is imported on its first use, so that the built-in readers register.
READERS = Registry("annotation reader", "data.layout", discover=__name__)
# One instance per reader class: readers hold no state, and ``get_reader(alias)`` is
# ``get_reader(name)``.
_INSTANCES: dict[type[Reader], Reader] = {}


def register_reader(cls: type[Reader]) -> type[Reader]:
    """Class decorator: register ``cls`` under ``cls.name`` and its ``aliases``."""
    if not cls.name or cls.name == "auto":
        raise AssertionError(f"{cls.__qualname__} needs a name other than 'auto'")
    return READERS.register(cls.name, aliases=tuple(cls.aliases))(cls)


def _instance(cls: type[Reader]) -> Reader:
    if cls not in _INSTANCES:
        _INSTANCES[cls] = cls()
    return _INSTANCES[cls]


def readers() -> list[Reader]:
    """All registered readers in detection order (ascending ``priority``, then name)."""
    found = [_instance(READERS[name]) for name in READERS]
    return sorted(found, key=lambda r: (r.priority, r.name))


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
    cls = READERS.find(str(name))
    if cls is None:
        raise ConfigError(
            f"data.layout={name!r} is not a registered annotation reader; use auto or one of: "
            f"{describe_names()}"
        )
    return _instance(cls)


def check_layout(layout: str) -> str:
    """``auto`` or the canonical name of a registered reader (aliases resolved)."""
    return "auto" if str(layout) == "auto" else get_reader(layout).name
