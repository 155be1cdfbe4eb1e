"""Encoder-output cache for a frozen encoder.

With frozen weights the encoder output is a pure function of the (eval-transformed) image, so it
is computed once per image and stored as float16 in a memory-mapped ``.npy`` of shape (N, P, C),
with a json index next to it. The file name carries a hash of (image ids, encoder config,
image size); the index stores the full key and the shape, and both are checked on load, so a
cache made by another encoder config is never used, only rebuilt. Files are written under a
temporary name and renamed, and the index is written last: an interrupted build leaves nothing
that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

CACHE_VERSION = 1


def cache_key(image_ids: Sequence[str], encoder_key: dict, image_size: int) -> str:
    """sha256 over everything the features depend on (json with sorted keys, so dict order is irrelevant)."""
    payload = {
        "version": CACHE_VERSION,
        "image_ids": list(image_ids),
        "encoder": encoder_key,
        "image_size": int(image_size),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class FeatureStore:
    """Read-only view of one cache: ``store[image_id]`` -> float32 tensor (P, C).

    The memmap is opened lazily in each process, so DataLoader workers share the page cache
    instead of pickling the array.
    """

    def __init__(self, npy_path: Path, image_ids: Sequence[str], shape: tuple[int, int, int]):
        self.npy_path = Path(npy_path)
        self.row = {name: i for i, name in enumerate(image_ids)}
        self.shape = tuple(shape)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.npy_path, mmap_mode="r")
        return self._array

    def __getitem__(self, image_id: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.array[self.row[image_id]], dtype=np.float32))

    def __len__(self) -> int:
        return len(self.row)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # reopen the memmap in the worker rather than copying it
        return state


def paths_for(cache_dir: Path, key: str, name: str = "features") -> tuple[Path, Path]:
    stem = f"{name}-{key[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def load_feature_cache(
    cache_dir: str | os.PathLike,
    image_ids: Sequence[str],
    encoder_key: dict,
    image_size: int,
    name: str = "features",
) -> FeatureStore | None:
    """The matching cache, or None when absent, partial, or made for other ids/config/shape."""
    key = cache_key(image_ids, encoder_key, image_size)
    npy, index = paths_for(Path(cache_dir), key, name)
    try:
        with open(index) as f:
            meta = json.load(f)
        if meta.get("key") != key or meta.get("image_ids") != list(image_ids):
            return None
        shape = tuple(meta["shape"])
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (
        arr.shape != shape
        or arr.dtype != np.float16
        or len(shape) != 3
        or shape[0] != len(image_ids)
    ):
        return None
    store = FeatureStore(npy, image_ids, shape)
    store._array = arr
    return store


@torch.no_grad()
def build_feature_cache(
    cache_dir: str | os.PathLike,
    image_ids: Sequence[str],
    images: torch.utils.data.Dataset,
    encoder: torch.nn.Module,
    encoder_key: dict,
    image_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    quiet: bool = False,
    name: str = "features",
    desc: str = "feature cache",
) -> FeatureStore:
    """Load the cache for ``image_ids`` or compute it with ``encoder``.

    ``images[i]`` must be the eval-transformed float tensor (3, S, S) of ``image_ids[i]``;
    ``encoder`` maps (B, 3, S, S) -> (B, P, C) and runs in eval mode on its own device.
    """
    cache_dir = Path(cache_dir)
    found = load_feature_cache(cache_dir, image_ids, encoder_key, image_size, name)
    if found is not None:
        return found
    from tqdm.auto import tqdm

    key = cache_key(image_ids, encoder_key, image_size)
    npy, index = paths_for(cache_dir, key, name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp_npy = npy.with_name(f"{npy.stem}.partial-{os.getpid()}.npy")
    was_training = encoder.training
    encoder.eval()
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = None
    row = 0
    try:
        with tqdm(
            total=len(image_ids), desc=desc, unit="img", disable=quiet, dynamic_ncols=True
        ) as bar:
            for batch in loader:
                feats = encoder(batch.to(device))  # (B, P, C)
                assert feats.dim() == 3, f"encoder must return (B, P, C), got {tuple(feats.shape)}"
                if out is None:
                    shape = (len(image_ids), feats.shape[1], feats.shape[2])
                    out = np.lib.format.open_memmap(
                        tmp_npy, mode="w+", dtype=np.float16, shape=shape
                    )
                out[row : row + len(feats)] = feats.float().cpu().numpy().astype(np.float16)
                row += len(feats)
                bar.update(len(feats))
        assert out is not None and row == len(image_ids), (
            "image dataset and id list differ in length"
        )
        out.flush()
        shape = out.shape
        del out
        os.replace(tmp_npy, npy)
        meta = {
            "key": key,
            "shape": list(shape),
            "dtype": "float16",
            "encoder": encoder_key,
            "image_size": int(image_size),
            "image_ids": list(image_ids),
        }
        tmp_index = index.with_name(f"{index.name}.partial-{os.getpid()}")
        tmp_index.write_text(json.dumps(meta))
        os.replace(tmp_index, index)  # the index is the commit marker: written last
    except BaseException:
        tmp_npy.unlink(missing_ok=True)
        raise
    finally:
        encoder.train(was_training)
    return FeatureStore(npy, image_ids, shape)
