"""Encoder-output cache for a frozen encoder.

With frozen weights the encoder output is a pure function of the (eval-transformed) image, so it
is computed once per image and stored as float16 in a memory-mapped ``.npy`` of shape (N, P, C),
with a json index next to it. The file name carries a hash of (image ids, encoder config,
image size, the dataset's identity: see :func:`imgcap.data.cache_location.dataset_identity`,
since one cache folder serves every dataset); the index stores the full key and the shape, and both are checked on load, so a
cache made by another encoder config is never used, only rebuilt. Files are written under a
temporary name and renamed, and the index is written last: an interrupted build leaves nothing
that a later run would trust.

The build runs where the encoder is fastest: on the training device (the data module passes the
Trainer's root device), in inference mode with large batches. On CUDA the encoder runs in
channels_last under float16 autocast: the store is float16 anyway, and float16 keeps three more
mantissa bits than bfloat16, so a cache built on a GPU agrees with one built on the CPU in float32
to float16 tolerance (tests/test_data_feature_cache.py compares the two dtype paths). A batch
that overflows float16 is recomputed in float32. The build never touches the global RNG state, so
a cache miss and a cache hit leave training with the same random stream.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

CACHE_VERSION = 1


def cache_key(
    image_ids: Sequence[str], encoder_key: dict, image_size: int, dataset: dict | None = None
) -> str:
    """sha256 over everything the features depend on (json with sorted keys, so dict order is
    irrelevant). ``dataset``: which images these are (their folder and files, see
    :func:`imgcap.data.cache_location.dataset_identity`); ids alone are file names, which two
    datasets may share."""
    payload = {
        "version": CACHE_VERSION,
        "image_ids": list(image_ids),
        "encoder": encoder_key,
        "image_size": int(image_size),
    }
    if dataset is not None:
        payload["dataset"] = dataset
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
    dataset: dict | None = None,
) -> FeatureStore | None:
    """The matching cache, or None when absent, partial, or made for other ids/config/shape
    or another dataset."""
    key = cache_key(image_ids, encoder_key, image_size, dataset)
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


def default_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype the cache is computed in on ``device``: float16 on CUDA, none (float32)
    elsewhere (CPU half-precision convolutions are slower than float32 on most CPUs)."""
    return torch.float16 if device.type == "cuda" else None


def default_batch_size(device: torch.device, fallback: int) -> int:
    """Large batches keep a GPU busy; on the CPU the caller's batch size is as good as any."""
    return max(256, fallback) if device.type == "cuda" else fallback


def _encode_batch(
    encoder: torch.nn.Module,
    pixels: torch.Tensor,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """(B, 3, S, S) on the host -> float16 features (B, P, C) on ``device``."""
    pixels = pixels.to(device, non_blocking=True)
    if device.type == "cuda":
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    feats = None
    if autocast_dtype is not None:
        with torch.autocast(device.type, dtype=autocast_dtype):
            feats = encoder(pixels)
        if not bool(torch.isfinite(feats).all()):  # overflowed: redo this batch in float32
            feats = None
    if feats is None:
        feats = encoder(pixels)
    assert feats.dim() == 3, f"encoder must return (B, P, C), got {tuple(feats.shape)}"
    return feats.to(torch.float16)


class _BackgroundWriter:
    """Copies feature batches to the host and into the memmap on a worker thread, so that the
    device computes batch i + 1 while batch i travels (a ResNet-50 grid is 0.8 MB per image in
    float16: at GPU rates the copy and the write cost as much as the forward pass)."""

    def __init__(self, max_pending: int = 2) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque = deque()
        self.max_pending = max_pending

    def submit(self, out: np.ndarray, row: int, feats: torch.Tensor) -> None:
        if feats.device.type == "cuda":
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host, ready = feats, None
        self.pending.append(self.pool.submit(self._write, out, row, host, ready))
        while len(self.pending) > self.max_pending:
            self.pending.popleft().result()

    @staticmethod
    def _write(out: np.ndarray, row: int, host: torch.Tensor, ready) -> None:
        if ready is not None:
            ready.synchronize()
        out[row : row + len(host)] = host.numpy()

    def close(self) -> None:
        """Wait for every write (re-raising a failed one) and stop the thread."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


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
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None | str = "auto",
    dataset: dict | None = None,
) -> FeatureStore:
    """Load the cache for ``image_ids`` or compute it with ``encoder``.

    ``images[i]`` must be the eval-transformed float tensor (3, S, S) of ``image_ids[i]``;
    ``encoder`` maps (B, 3, S, S) -> (B, P, C). It runs in eval mode and inference mode on
    ``device`` (default: where its parameters are; it is moved there for the build and back
    afterwards), in ``autocast_dtype`` (``"auto"``: :func:`default_autocast_dtype`).
    ``dataset``: the images' identity, part of the key (see :func:`cache_key`).
    """
    cache_dir = Path(cache_dir)
    found = load_feature_cache(cache_dir, image_ids, encoder_key, image_size, name, dataset)
    if found is not None:
        return found
    from tqdm.auto import tqdm

    key = cache_key(image_ids, encoder_key, image_size, dataset)
    npy, index = paths_for(cache_dir, key, name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp_npy = npy.with_name(f"{npy.stem}.partial-{os.getpid()}.npy")
    home = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    device = torch.device(device) if device is not None else home
    if autocast_dtype == "auto":
        autocast_dtype = default_autocast_dtype(device)
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(
        images,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    out = None
    row = 0
    writer = _BackgroundWriter()
    # fork_rng: the loader draws a worker seed from the global generator; training must not
    # see a different random stream depending on whether the cache was already there.
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with (
            torch.random.fork_rng(devices=rng_devices),
            torch.inference_mode(),
            tqdm(
                total=len(image_ids), desc=desc, unit="img", disable=quiet, dynamic_ncols=True
            ) as bar,
        ):
            if device.type == "cuda":
                encoder.to(device, memory_format=torch.channels_last)
            else:
                encoder.to(device)
            try:
                for batch in loader:
                    feats = _encode_batch(encoder, batch, device, autocast_dtype)  # (B, P, C)
                    if out is None:
                        shape = (len(image_ids), feats.shape[1], feats.shape[2])
                        out = np.lib.format.open_memmap(
                            tmp_npy, mode="w+", dtype=np.float16, shape=shape
                        )
                    writer.submit(out, row, feats)
                    row += len(feats)
                    bar.update(len(feats))
            finally:
                writer.close()
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
            "dataset": dataset,
            "image_ids": list(image_ids),
        }
        tmp_index = index.with_name(f"{index.name}.partial-{os.getpid()}")
        tmp_index.write_text(json.dumps(meta))
        os.replace(tmp_index, index)  # the index is the commit marker: written last
    except BaseException:
        tmp_npy.unlink(missing_ok=True)
        index.with_name(f"{index.name}.partial-{os.getpid()}").unlink(missing_ok=True)
        raise
    finally:
        encoder.to(home, memory_format=torch.contiguous_format)
        encoder.train(was_training)
    return FeatureStore(npy, image_ids, shape)
