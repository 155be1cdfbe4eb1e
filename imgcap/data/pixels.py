"""Batched image pipeline for the feature-cache build: files -> normalised pixels on the device.

The per-image path (a DataLoader over :class:`~imgcap.data.datasets.ImageFiles`) decodes,
resizes and normalises one image at a time in Python. Here:

* file bytes are read (and, on the CPU path, decoded and resized by Pillow, which releases the
  GIL) by a thread pool, one batch ahead of the encoder;
* on CUDA, JPEGs are decoded in batches by ``torchvision.io.decode_jpeg(..., device="cuda")``
  (nvJPEG); files it does not take (progressive, grayscale, CMYK, Adobe RGB, other formats,
  or a file it refuses) are decoded one by one by Pillow, the existing path, whose
  :class:`~imgcap.errors.DataError` names a bad file as before;
* resize ("shorter side to S" with antialiasing), centre crop and normalisation run batched on
  the device, images of equal size together.

Two decode paths, two results: ``"pil"`` (CPU) gives exactly the values of
:func:`~imgcap.data.transforms.eval_transform`; ``"nvjpeg"`` (CUDA) differs from it by the
decoders' IDCT and chroma upsampling and by the resampling kernel, within the tolerance that
tests/data/test_pixels.py states. The feature-cache key records the path, so the two never mix.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from imgcap.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_image, to_uint8

PIL_PATH = "pil"
GPU_PATH = "nvjpeg"

# Start-of-frame markers nvJPEG decodes reliably: baseline and extended sequential Huffman.
_SOF_GPU = {0xC0, 0xC1}
_SOF_ANY = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def gpu_decode_available(device: torch.device) -> bool:
    """True when JPEGs can be decoded on ``device`` (a CUDA device with torchvision's nvJPEG)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def decode_path_for(device: torch.device) -> str:
    """The decode path a build on ``device`` takes: ``"nvjpeg"`` on CUDA, else ``"pil"``."""
    return GPU_PATH if gpu_decode_available(device) else PIL_PATH


def gpu_decodable(data: bytes) -> bool:
    """True for a sequential (non-progressive) 3-component YCbCr JPEG, the kind nvJPEG decodes
    to the same colours as libjpeg; False sends the file to Pillow.

    Walks the marker segments up to the first start-of-frame (a few header bytes)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    pos, end = 2, len(data)
    adobe_rgb = False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe_rgb = segment[11] == 0  # transform 0: the channels are RGB (or CMYK), not YCbCr
        if marker in _SOF_ANY:
            components = segment[5] if len(segment) > 5 else 0
            return marker in _SOF_GPU and components == 3 and not adobe_rgb
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return False
        pos += 2 + length
    return False


def _resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Shorter side to ``size``, the longer one scaled and truncated (as ``T.Resize(size)``)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """Top/left of the centred ``size`` square (as ``T.CenterCrop(size)``)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def normalize_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 normalised (B, 3, S, S), with the same operations in the
    same order as ``ToTensor`` + ``Normalize``, so a CPU batch equals the per-image transform
    bit for bit."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return pixels.to(torch.float32).div(255).sub_(mean).div_(std)


def resize_crop_batch(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 images (3, H_i, W_i) on one device -> uint8 (B, 3, S, S): shorter side to ``size``
    (bilinear, antialiased), centre crop; images of one size are resized as one batch. Values
    are rounded back to uint8, as Pillow's resize returns them."""
    device = images[0].device
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    for (h, w), rows in groups.items():
        batch = torch.stack([images[i] for i in rows]).to(torch.float32)  # (G, 3, H, W)
        nh, nw = _resized_size(h, w, size)
        if (nh, nw) != (h, w):
            batch = F.interpolate(
                batch, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
            )
        top, left = _crop_offsets(nh, nw, size)
        batch = batch[:, :, top : top + size, left : left + size]
        index = torch.tensor(rows, device=device)
        out.index_copy_(0, index, batch.round_().clamp_(0, 255).to(torch.uint8))
    return out


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _pil_uint8(path: Path, size: int) -> torch.Tensor:
    """The existing per-image path up to the crop: uint8 (3, S, S); DataError for a bad file."""
    return to_uint8(load_image(path), size)


def _pil_full(path: Path) -> torch.Tensor:
    """Pillow decode at full size: uint8 (3, H, W); DataError for a bad file."""
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(load_image(path))


class ImageBatches:
    """The eval-transformed images of ``image_ids`` under ``image_dir``, batch by batch, in
    order, as float32 (B, 3, S, S) on ``device``.

    ``decode``: ``"auto"`` (nvJPEG on CUDA, Pillow elsewhere), ``"pil"`` or ``"nvjpeg"``.
    ``threads``: the reader pool (default: two per CPU this process may use, at most 32).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        image_ids: Sequence[str],
        image_size: int,
        device: torch.device | str = "cpu",
        decode: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.image_ids = list(image_ids)
        self.image_size = int(image_size)
        self.device = torch.device(device)
        if decode == "auto":
            decode = decode_path_for(self.device)
        if decode not in (PIL_PATH, GPU_PATH):
            raise ValueError(f"decode must be auto, {PIL_PATH} or {GPU_PATH}, got {decode!r}")
        if decode == GPU_PATH and not gpu_decode_available(self.device):
            raise ValueError(f"decode={GPU_PATH} needs a CUDA device, got {self.device}")
        self.decode = decode
        if threads is None:
            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:
                cpus = os.cpu_count() or 1
            threads = min(32, 2 * cpus)
        self.threads = max(1, int(threads))
        self.gpu_fallbacks = 0  # files the last pass decoded with Pillow on the nvJPEG path

    def __len__(self) -> int:
        return len(self.image_ids)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Float32 normalised (B, 3, S, S) on the device; the next batch's files are read (and
        on the CPU path decoded) by the threads while the caller encodes this one."""
        paths = [self.image_dir / name for name in self.image_ids]
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        work = _pil_uint8 if self.decode == PIL_PATH else None
        self.gpu_fallbacks = 0
        with ThreadPoolExecutor(max_workers=self.threads) as pool:

            def submit(chunk: list[Path]) -> list[Future]:
                if work is not None:
                    return [pool.submit(work, p, self.image_size) for p in chunk]
                return [pool.submit(_read_bytes, p) for p in chunk]

            pending: deque[tuple[list[Path], list[Future]]] = deque()
            ahead = 2
            for chunk in chunks[:ahead]:
                pending.append((chunk, submit(chunk)))
            next_chunk = ahead
            try:
                while pending:
                    chunk, futures = pending.popleft()
                    if next_chunk < len(chunks):
                        pending.append((chunks[next_chunk], submit(chunks[next_chunk])))
                        next_chunk += 1
                    results = [f.result() for f in futures]
                    if work is not None:
                        pixels = torch.stack(results).to(self.device, non_blocking=True)
                    else:
                        pixels = self._gpu_decode(chunk, results)
                    yield normalize_uint8(pixels)
            finally:
                for _, futures in pending:
                    for f in futures:
                        f.cancel()

    def _gpu_decode(self, paths: list[Path], blobs: list[bytes]) -> torch.Tensor:
        """nvJPEG for the files it takes (in one call), Pillow for the rest -> uint8 (B, 3, S, S)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        images: list[torch.Tensor | None] = [None] * len(paths)
        on_gpu = [i for i, b in enumerate(blobs) if gpu_decodable(b)]
        if on_gpu:
            inputs = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in on_gpu]
            try:
                decoded = decode_jpeg(inputs, mode=ImageReadMode.RGB, device=self.device)
            except Exception:  # a file spoilt the batch: find it, one file at a time
                decoded = [self._gpu_decode_one(x) for x in inputs]
            for i, img in zip(on_gpu, decoded, strict=True):
                images[i] = img
        for i, img in enumerate(images):
            if img is None:
                self.gpu_fallbacks += 1
                images[i] = _pil_full(paths[i]).to(self.device, non_blocking=True)
        return resize_crop_batch(images, self.image_size)

    def _gpu_decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        """One file on the GPU, or None when nvJPEG refuses it (then Pillow decodes it)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except Exception:
            return None
