"""The original Flickr8k release: ``Flicker8k_Dataset/*.jpg`` (sic) + ``Flickr8k_text/`` with
``Flickr8k.token.txt`` (``IMG.jpg#N<TAB>caption``, one line per caption)."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from imgcap.data.readers import Reader, ReadResult, register_reader
from imgcap.data.readers.base import Duplicates, first_file, first_line, listdir, read_text
from imgcap.errors import DataError

TOKEN_FILE = "Flickr8k.token.txt"
_TOKEN_LINE = re.compile(r"^[^\t#]+#\d+\t")


def read_token_file(path: Path, image_dir: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Read ``Flickr8k.token.txt`` (``IMG.jpg#N<TAB>caption``).

    Ids without an image file (the full release has ``2258277193_586949ec62.jpg.1``) are dropped
    with a single warning; returns ``(captions, skipped_ids)``.
    """
    captions: dict[str, list[str]] = {}
    duplicates = Duplicates(path)
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
    present = listdir(image_dir)
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


@register_reader
class TokenFile(Reader):
    name = "original"
    aliases = ("token_file",)
    priority = 20
    expects = f"Flickr8k_text/{TOKEN_FILE}"

    def find(self, root: Path) -> Path | None:
        return first_file(root / "Flickr8k_text" / TOKEN_FILE, root / TOKEN_FILE)

    def claims(self, path: Path) -> bool:
        return path.name.endswith(".token.txt") or bool(_TOKEN_LINE.match(first_line(path)))

    def read(self, path: Path, image_dir: Path) -> ReadResult:
        captions, skipped = read_token_file(path, image_dir)
        return ReadResult(captions, skipped=skipped)
