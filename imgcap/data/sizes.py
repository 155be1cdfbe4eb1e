"""The one check of the data sizes (``data.batch_size``, ``data.image_size``, ...), wherever
they are given: the run checks before any work (:mod:`imgcap.run.checks`) and the data module
when it is built.

Each size is an integer at or above its minimum; ``optional`` ones may also be null. A bad one is
a one-line ConfigError naming the key, e.g. ``data.batch_size=0 must be an integer >= 1, e.g.
data.batch_size=1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgcap.settings import check_int

#: key -> (minimum, may be null)
DATA_SIZES: dict[str, tuple[int, bool]] = {
    "batch_size": (1, False),
    "image_size": (8, False),
    "min_word_freq": (1, False),
    "eval_batch_size": (1, True),
    # <start>, a word, <end>
    "max_caption_len": (3, True),
    "limit_train_images": (1, True),
}


def check_data_sizes(values: Mapping[str, Any]) -> None:
    """Check the sizes among ``values`` (``data.*`` keys without the prefix; others ignored)."""
    for key, (minimum, optional) in DATA_SIZES.items():
        if key in values:
            check_int(f"data.{key}", values[key], minimum, optional)
