"""Kaggle Flickr8k (adityajn105/flickr8k): ``Images/*.jpg`` + ``captions.txt``, a CSV with the
header ``image,caption`` and one row per caption. The generated shapes set uses it too."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from imgcap.data.readers import Reader, ReadResult, register_reader
from imgcap.data.readers.base import Duplicates, first_file, first_line, listdir, read_text
from imgcap.errors import DataError

KAGGLE_FILE = "captions.txt"


def read_kaggle_captions(path: Path, image_dir: Path) -> dict[str, list[str]]:
    """Read ``captions.txt`` (CSV ``image,caption``). Every listed image must exist."""
    captions: dict[str, list[str]] = {}
    first_row: dict[str, int] = {}
    duplicates = Duplicates(path)
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
            first_row.setdefault(image, line)
    duplicates.warn()
    present = listdir(image_dir)
    for image, line in first_row.items():
        if image not in present:
            raise DataError(
                f"{path}:{line}: image {image} is listed but missing from {image_dir}; "
                "re-download/unzip the images or delete its rows"
            )
    return captions


@register_reader
class KaggleCSV(Reader):
    name = "kaggle"
    aliases = ("kaggle_csv",)
    priority = 10
    expects = KAGGLE_FILE

    def find(self, root: Path) -> Path | None:
        return first_file(root / KAGGLE_FILE)

    def claims(self, path: Path) -> bool:
        header = [h.strip().lower() for h in first_line(path).split(",")]
        return header == ["image", "caption"]

    def read(self, path: Path, image_dir: Path) -> ReadResult:
        return ReadResult(read_kaggle_captions(path, image_dir))
