"""A small DataModule over a test dataset, shared by the data tests."""

from __future__ import annotations

from pathlib import Path

from imgcap.data.datamodule import CaptionDataModule


def small_datamodule(root: Path, cache_dir: Path, **overrides) -> CaptionDataModule:
    """32 px images, batches of 8, every word kept, no progress bars; ``overrides`` win."""
    settings = dict(
        root=str(root),
        cache_dir=str(cache_dir),
        image_size=32,
        batch_size=8,
        min_word_freq=1,
        quiet=True,
    )
    return CaptionDataModule(**{**settings, **overrides})
