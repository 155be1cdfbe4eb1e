"""Encoder-output cache for a frozen encoder.

With frozen weights the encoder output is a pure function of the (eval-transformed) image, so it
is computed once per image and stored as float16 in a memory-mapped ``.npy`` of shape (N, P, C),
with a json index next to it. The file name carries a hash of (image ids, encoder config,
image size, the dataset's identity, and the decode path when it is not Pillow's: see
:func:`imgcap.data.cache_location.dataset_identity`, since one cache folder serves every dataset,
and :mod:`imgcap.data.pixels`); the index stores the full key and the shape, and both are checked
on load, so a cache made by another encoder config, for another dataset, or from pixels decoded
another way (nvJPEG on a GPU) is never used, only rebuilt. Files are written under a temporary
name and renamed, and the index is written last: an interrupted build leaves nothing that a
later run would trust.

The build runs where the encoder is fastest: on the training device (the data module passes the
Trainer's root device), in inference mode with large batches. On CUDA the encoder runs in
channels_last under float16 autocast: the store is float16 anyway, and float16 keeps three more
mantissa bits than bfloat16, so a cache built on a GPU agrees with one built on the CPU in float32
to float16 tolerance (tests/data/test_feature_cache.py compares the two dtype paths). A batch
that overflows float16 is recomputed in float32. The build never touches the global RNG state, so
a cache miss and a cache hit leave training with the same random stream.

A cache is built once, also when several processes (the trials of a sweep) want it at the same
time: the builder holds an exclusive ``flock`` on ``<name>-<key>.lock`` next to the cache until
the index is written; the others wait on it and then read what it wrote.

With ``keep_on`` the features also stay in memory as one float16 tensor, on the training device
or in (pinned) host memory, for :mod:`imgcap.data.resident`: a fresh build fills that tensor as
it goes and writes the file in the background (no write-then-read round trip before training).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from imgcap.data.pixels import PIL_PATH, ImageBatches

try:  # POSIX; elsewhere concurrent builders are not coordinated
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Rows copied per step when a stored cache is loaded into memory (bounds the host staging).
_LOAD_ROWS = 256


def cache_key(
    image_ids: Sequence[str],
    encoder_key: dict,
    image_size: int,
    dataset: dict | None = None,
    decode: str = PIL_PATH,
) -> str:
    """sha256 over everything the features depend on (json with sorted keys, so dict order is
    irrelevant). ``dataset``: which images these are (their folder and files, see
    :func:`imgcap.data.cache_location.dataset_identity`); ids alone are file names, which two
    datasets may share. ``decode``: the path that made the pixels (``pil`` or ``nvjpeg``; only a
    path other than Pillow's enters the key, so Pillow-built caches keep their names).
    """
    payload = {
        "version": CACHE_VERSION,
        "image_ids": list(image_ids),
        "encoder": encoder_key,
        "image_size": int(image_size),
    }
    if decode != PIL_PATH:
        payload["decode"] = decode
    if dataset is not None:
        payload["dataset"] = dataset
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class FeatureStore:
    """One cache: ``store[image_id]`` -> float32 tensor (P, C) from the memmap, and, when kept
    in memory, ``store.resident``: float16 (N, P, C) on a device or in host memory.

    The memmap is opened lazily in each process, so DataLoader workers share the page cache
    instead of pickling the array.
    """

    def __init__(self, npy_path: Path, image_ids: Sequence[str], shape: tuple[int, int, int]):
        self.npy_path = Path(npy_path)
        self.image_ids = list(image_ids)
        self.row = {name: i for i, name in enumerate(image_ids)}
        self.shape = tuple(shape)
        self._array: np.ndarray | None = None
        self.resident: torch.Tensor | None = None
        self._writing: threading.Thread | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self.wait_written()
            self._array = np.load(self.npy_path, mmap_mode="r")
        return self._array

    def __getitem__(self, image_id: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.array[self.row[image_id]], dtype=np.float32))

    def __len__(self) -> int:
        return len(self.row)

    @property
    def nbytes(self) -> int:
        """Size of the float16 features in memory."""
        n, p, c = self.shape
        return 2 * n * p * c

    def wait_written(self) -> None:
        """Return once a background write of this cache has finished (at once if none)."""
        if self._writing is not None:
            self._writing.join()
            self._writing = None

    def keep_in_memory(self, device: torch.device | None, pin: bool = False) -> FeatureStore:
        """Load the whole cache into one float16 tensor on ``device`` (host memory for the CPU,
        page-locked when ``pin``); nothing when ``device`` is None or it is already there."""
        if device is None:
            return self
        device = torch.device(device)
        if self.resident is not None and self.resident.device == device:
            return self
        if self.resident is not None:  # built elsewhere: move it
            self.resident = _place(self.resident, device, pin)
            return self
        out = _empty(self.shape, device, pin)
        array = self.array
        for start in range(0, self.shape[0], _LOAD_ROWS):
            rows = torch.from_numpy(np.array(array[start : start + _LOAD_ROWS]))
            out[start : start + len(rows)].copy_(rows)
        self.resident = out
        return self

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # reopen the memmap in the worker rather than copying it
        state["resident"] = None  # workers read the file; the resident copy stays put
        state["_writing"] = None
        return state


def _empty(shape: tuple[int, ...], device: torch.device, pin: bool) -> torch.Tensor:
    pin = pin and device.type == "cpu" and torch.cuda.is_available()
    return torch.empty(shape, dtype=torch.float16, device=device, pin_memory=pin)


def _place(tensor: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    out = _empty(tuple(tensor.shape), device, pin)
    out.copy_(tensor)
    return out


def paths_for(cache_dir: Path, key: str, name: str = "features") -> tuple[Path, Path]:
    stem = f"{name}-{key[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def lock_path_for(cache_dir: Path, key: str, name: str = "features") -> Path:
    """The file whose ``flock`` the builder of a cache holds until the cache is complete."""
    return cache_dir / f"{name}-{key[:16]}.lock"


class BuildLock:
    """An exclusive ``flock`` on a lock file; ``acquire`` waits for another holder (another
    process, or another thread with its own ``BuildLock``) and says so in one log line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish the feature cache %s", self.path.stem)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def load_feature_cache(
    cache_dir: str | os.PathLike,
    image_ids: Sequence[str],
    encoder_key: dict,
    image_size: int,
    name: str = "features",
    dataset: dict | None = None,
    decode: str = PIL_PATH,
) -> FeatureStore | None:
    """The matching cache, or None when absent, partial, or made for other ids/config/shape,
    another dataset or another decode path."""
    key = cache_key(image_ids, encoder_key, image_size, dataset, decode)
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

    def close(self, check: bool = True) -> None:
        """Wait for every write (re-raising a failed one unless ``check`` is off) and stop the
        thread."""
        try:
            while self.pending:
                future = self.pending.popleft()
                if check:
                    future.result()
                else:
                    future.exception()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def build_feature_cache(
    cache_dir: str | os.PathLike,
    image_ids: Sequence[str],
    images: torch.utils.data.Dataset | ImageBatches,
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
    keep_on: torch.device | str | None = None,
    pin: bool = False,
    dataset: dict | None = None,
) -> FeatureStore:
    """Load the cache for ``image_ids`` or compute it with ``encoder``.

    ``images``: an :class:`~imgcap.data.pixels.ImageBatches` (threaded reads, batched decode
    and transforms; its decode path is part of the key), or a dataset whose ``images[i]`` is the
    eval-transformed float tensor (3, S, S) of ``image_ids[i]`` (read by a DataLoader with
    ``num_workers``; Pillow-decoded pixels). ``encoder`` maps (B, 3, S, S) -> (B, P, C). It runs
    in eval mode and inference mode on ``device`` (default: where its parameters are; it is moved
    there for the build and back afterwards), in ``autocast_dtype`` (``"auto"``:
    :func:`default_autocast_dtype`). ``dataset``: the images' identity, part of the key (see
    :func:`cache_key`).

    ``keep_on``: also keep the features in memory (``store.resident``) on that device (host
    memory for ``cpu``, page-locked when ``pin``). A fresh build then returns as soon as the
    features are computed and finishes writing the file in a background thread
    (``store.wait_written()``); without ``keep_on`` the file is complete on return.
    """
    cache_dir = Path(cache_dir)
    decode = getattr(images, "decode", PIL_PATH)
    keep_on = torch.device(keep_on) if keep_on is not None else None
    found = load_feature_cache(cache_dir, image_ids, encoder_key, image_size, name, dataset, decode)
    if found is not None:
        return found.keep_in_memory(keep_on, pin)
    key = cache_key(image_ids, encoder_key, image_size, dataset, decode)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # reported by the write below, with the file's name
    lock = BuildLock(lock_path_for(cache_dir, key, name))
    lock.acquire()
    try:
        found = load_feature_cache(
            cache_dir, image_ids, encoder_key, image_size, name, dataset, decode
        )
        if found is not None:  # another process built it while this one waited
            lock.release()
            return found.keep_in_memory(keep_on, pin)
        return _build(
            cache_dir, key, name, image_ids, images, encoder, encoder_key, image_size,
            batch_size, num_workers, quiet, desc, device, autocast_dtype, keep_on, pin, lock,
            dataset,
        )  # fmt: skip
    except BaseException:
        lock.release()
        raise


def _build(
    cache_dir: Path,
    key: str,
    name: str,
    image_ids: Sequence[str],
    images: torch.utils.data.Dataset | ImageBatches,
    encoder: torch.nn.Module,
    encoder_key: dict,
    image_size: int,
    batch_size: int,
    num_workers: int,
    quiet: bool,
    desc: str,
    device: torch.device | str | None,
    autocast_dtype: torch.dtype | None | str,
    keep_on: torch.device | None,
    pin: bool,
    lock: BuildLock,
    dataset: dict | None,
) -> FeatureStore:
    """Compute the cache (the caller holds ``lock``; it is released once the index is written,
    in the background thread when the features are kept in memory)."""
    from tqdm.auto import tqdm

    npy, index = paths_for(cache_dir, key, name)
    tmp_npy = npy.with_name(f"{npy.stem}.partial-{os.getpid()}-{threading.get_ident()}.npy")
    home = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    device = torch.device(device) if device is not None else home
    if autocast_dtype == "auto":
        autocast_dtype = default_autocast_dtype(device)
    was_training = encoder.training
    encoder.eval()
    if isinstance(images, ImageBatches):
        batches = images.batches(batch_size)
    else:
        batches = DataLoader(
            images,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
    out = None
    resident = None
    row = 0
    writer = _BackgroundWriter()
    # fork_rng: the loader draws a worker seed from the global generator; training must not
    # see a different random stream depending on whether the cache was already there.
    rng_devices = [device] if device.type == "cuda" else []
    try:
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
                for batch in batches:
                    feats = _encode_batch(encoder, batch, device, autocast_dtype)  # (B, P, C)
                    if out is None:
                        shape = (len(image_ids), feats.shape[1], feats.shape[2])
                        out = np.lib.format.open_memmap(
                            tmp_npy, mode="w+", dtype=np.float16, shape=shape
                        )
                        if keep_on is not None:
                            resident = _empty(shape, keep_on, pin)
                    if resident is not None:  # written from there once all are computed
                        resident[row : row + len(feats)].copy_(feats)
                    else:
                        writer.submit(out, row, feats)
                    row += len(feats)
                    bar.update(len(feats))
        finally:
            encoder.to(home, memory_format=torch.contiguous_format)
            encoder.train(was_training)
        assert out is not None and row == len(image_ids), (
            "image dataset and id list differ in length"
        )
    except BaseException:
        writer.close(check=False)
        tmp_npy.unlink(missing_ok=True)
        index.with_name(f"{index.name}.partial-{os.getpid()}").unlink(missing_ok=True)
        raise
    meta = {
        "key": key,
        "shape": list(out.shape),
        "dtype": "float16",
        "encoder": encoder_key,
        "image_size": int(image_size),
        "dataset": dataset,
        "decode": getattr(images, "decode", PIL_PATH),
        "image_ids": list(image_ids),
    }
    store = FeatureStore(npy, image_ids, tuple(out.shape))
    commit = _Commit(writer, out, tmp_npy, npy, index, meta, lock, resident)
    if resident is None:
        commit.run(raise_errors=True)
        return store
    store.resident = resident
    # Training starts on the features in memory while the file is completed; a process that
    # exits waits for this (non-daemon) thread.
    store._writing = threading.Thread(target=commit.run, name=f"write {npy.name}")
    store._writing.start()
    return store


class _Commit:
    """Finish a build's file: wait for the writes, flush, rename, write the index last, unlock."""

    def __init__(self, writer, out, tmp_npy, npy, index, meta, lock, resident=None) -> None:
        self.writer, self.out, self.tmp_npy, self.npy = writer, out, tmp_npy, npy
        self.index, self.meta, self.lock = index, meta, lock
        self.resident = resident  # the features in memory, to write from (read only here)

    def run(self, raise_errors: bool = False) -> None:
        try:
            self.writer.close()
            if self.resident is not None:
                for start in range(0, len(self.resident), _LOAD_ROWS):
                    rows = self.resident[start : start + _LOAD_ROWS].cpu()
                    self.out[start : start + len(rows)] = rows.numpy()
            self.resident = None
            self.out.flush()
            del self.out
            os.replace(self.tmp_npy, self.npy)
            tmp_index = self.index.with_name(
                f"{self.index.name}.partial-{os.getpid()}-{threading.get_ident()}"
            )
            tmp_index.write_text(json.dumps(self.meta))
            os.replace(tmp_index, self.index)  # the index is the commit marker: written last
        except BaseException as err:
            self.tmp_npy.unlink(missing_ok=True)
            if raise_errors:
                raise
            log.warning(
                "could not write the feature cache %s (%s); training goes on with the features "
                "in memory, the next run builds it again",
                self.npy,
                err,
            )
        finally:
            self.lock.release()
