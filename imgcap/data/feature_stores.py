"""The feature caches of a data module's splits: computed once by a frozen encoder on the
training device, read back on later runs, and kept in memory as ``data.resident`` says.

One :class:`FeatureStores` per data module: it holds the encoder, decides once where the cached
features live (:func:`~imgcap.data.resident.choose_placement`) and keeps one
:class:`~imgcap.data.feature_cache.FeatureStore` per split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from imgcap.data.annotations import Annotations
from imgcap.data.cache_location import dataset_identity
from imgcap.data.feature_cache import FeatureStore, build_feature_cache, default_batch_size
from imgcap.data.pixels import ImageBatches
from imgcap.data.resident import Placement, choose_placement, feature_shape
from imgcap.errors import DataError
from imgcap.phase_timing import timed

log = logging.getLogger(__name__)


class FeatureStores:
    """Per-split feature caches for one encoder.

    Args:
        cache_dir: where the caches (and their locks) live.
        image_size: S, the crop the encoder sees (part of every cache key).
        resident: ``data.resident`` (auto | device | host | off).
        batch_size: the fallback batch of the build when the device gives no better one.
        num_workers, quiet: as the data module's.
    """

    def __init__(
        self,
        cache_dir: Path,
        image_size: int,
        resident: str,
        batch_size: int,
        num_workers: int,
        quiet: bool,
    ) -> None:
        self.cache_dir = cache_dir
        self.image_size = image_size
        self.resident = resident
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.quiet = quiet
        self.encoder: torch.nn.Module | None = None
        self.encoder_key: dict | None = None
        self.placement: Placement | None = None  # decided once, on the first cache needed
        self._stores: dict[str, FeatureStore] = {}

    def use_encoder(self, encoder: torch.nn.Module, encoder_key: dict) -> None:
        """``encoder``: (B, 3, S, S) -> (B, P, C), frozen; ``encoder_key``: everything its
        output depends on (architecture, weights, grid size...), part of the cache key."""
        self.encoder = encoder
        self.encoder_key = dict(encoder_key)
        self._stores.clear()

    def __getitem__(self, split: str) -> FeatureStore:
        """The split's store, once built or read (KeyError before)."""
        return self._stores[split]

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None and self.encoder_key is not None

    @timed("cache build")  # built here, or read when present: one phase of the run's timings
    def store(
        self, split: str, ann: Annotations, device: torch.device | None = None
    ) -> FeatureStore:
        """The split's feature cache: read it, or compute it on ``device`` (None: where the
        encoder is); one store per split and process."""
        if split in self._stores:
            return self._stores[split]
        ids = ann.splits[split]
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(
                f"cannot create the cache folder {self.cache_dir} ({e}); set data.cache_dir to a writable folder"
            ) from None
        if device is None:
            device = next((p.device for p in self.encoder.parameters()), torch.device("cpu"))
        placement = self._choose_placement(device, ann)
        store = build_feature_cache(
            self.cache_dir,
            ids,
            # threaded reads, batched decode (nvJPEG on CUDA) and transforms on the device
            ImageBatches(ann.image_dir, ids, self.image_size, device),
            self.encoder,
            self.encoder_key,
            self.image_size,
            batch_size=default_batch_size(device, self.batch_size),
            num_workers=self.num_workers,
            quiet=self.quiet,
            desc=f"feature cache ({split})",
            device=device,
            keep_on=placement.keep_on,
            pin=placement.pin,
            dataset=dataset_identity(ann.image_dir, ids),
        )
        self._stores[split] = store
        return store

    def _choose_placement(self, device: torch.device, ann: Annotations) -> Placement:
        """Where the cached features live (``data.resident``), decided once for every split,
        with one log line."""
        if self.placement is None or self.placement.device != device:
            images = sum(len(ann.splits.get(s) or []) for s in ("train", "val", "test"))
            pixels, channels = feature_shape(self.encoder, self.image_size)
            nbytes = 2 * images * pixels * channels
            self.placement, message = choose_placement(self.resident, nbytes, device)
            log.info(message)
        return self.placement

    def wait_written(self) -> None:
        """Features kept in memory are written to disk in the background: finish the files."""
        for store in self._stores.values():
            store.wait_written()
