"""The ``data.*`` settings the data module takes, checked before any work: one line per mistake,
naming the key and what it accepts."""

from __future__ import annotations

import os

from imgcap.data.resident import RESIDENT_CHOICES
from imgcap.errors import ConfigError


def resolve_num_workers(value: int | str) -> int:
    """``auto`` -> one loader worker per CPU this process may use, less one for the main
    process, at most 8 (JPEG decoding past that rarely pays); an int as given."""
    if value == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return max(0, min(8, cpus - 1))
    try:
        workers = int(value)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0:
        raise ConfigError(f"data.num_workers must be 'auto' or an int >= 0, got {value!r}")
    return workers


def check_data_settings(
    *,
    captions_per_image: str | int,
    resident: str,
    bad_images: str,
    max_caption_len: int | None,
    batch_size: int,
    image_size: int,
) -> None:
    """Raise a one-line :class:`ConfigError` for the first setting out of its range."""
    if str(captions_per_image) not in ("all", "1"):
        raise ConfigError(f"data.captions_per_image must be 'all' or 1, got {captions_per_image!r}")
    if resident not in RESIDENT_CHOICES:
        raise ConfigError(
            f"data.resident must be one of {'|'.join(RESIDENT_CHOICES)}, got {resident!r}"
        )
    if bad_images not in ("error", "skip"):
        raise ConfigError(f"data.bad_images must be 'error' or 'skip', got {bad_images!r}")
    if max_caption_len is not None and max_caption_len < 3:
        raise ConfigError(
            f"data.max_caption_len must be >= 3 (<start>, a word, <end>), got {max_caption_len}"
        )
    if batch_size < 1 or image_size < 8:
        raise ConfigError(
            f"data.batch_size must be >= 1 and data.image_size >= 8, got {batch_size}, {image_size}"
        )
