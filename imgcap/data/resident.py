"""Training on cached features held in memory: batches gathered by index, no per-item Python.

With ``data.cache_features=true`` each split's features are one float16 tensor (N, P, C) kept
where ``data.resident`` says:

* ``device``: on the training device (a GPU: 6.5 GB for Flickr8k's 8091 images at 14x14x2048);
* ``host``: in host memory, page-locked when training on CUDA (plain memory on CPU-only
  machines): rows are gathered there, copied in float16 and converted on the device;
* ``off``: not held; the per-item DataLoader over the memory-mapped file (the old path);
* ``auto``: ``device`` when the features fit in half the free GPU memory, else ``host`` when
  they fit in half the available host memory, else ``off``; one log line says what it chose.

The training captions are encoded once into a padded int64 tensor (M, T_max) with their
lengths. A batch is a tensor of indices from :class:`IndexBatches` (the
:class:`~imgcap.data.sampler.ResumableSampler`'s order cut into batches, so the shuffled order
and exact resume are those of the per-item loader); the dataset gathers features and captions
for the whole batch with ``index_select``. The batch equals, value for value and dtype for
dtype, what the per-item loader and ``collate_train``/``collate_eval`` give (float16 features
become float32 by the same exact conversion), except that its tensors are already on the
training device. Under DDP every rank holds the split on its own device: the distributed
sampler hands each rank other batches every epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from imgcap.data.datasets import encode_caption
from imgcap.data.sampler import ResumableSampler
from imgcap.errors import ConfigError
from imgcap.vocab import PAD_ID, Vocabulary

log = logging.getLogger(__name__)

RESIDENT_CHOICES = ("auto", "device", "host", "off")
# auto keeps this much of the free memory for everything else (model, activations, workers).
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Placement:
    """Where the features live (``keep_on``; None = not held) and where batches go (``device``)."""

    mode: str  # device | host | off
    device: torch.device
    keep_on: torch.device | None
    pin: bool = False


def available_host_bytes() -> int:
    """Host memory available to new allocations (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def free_device_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device (0 for other devices)."""
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def choose_placement(
    mode: str,
    nbytes: int,
    device: torch.device,
    device_free: int | None = None,
    host_free: int | None = None,
) -> tuple[Placement, str]:
    """Where ``nbytes`` of float16 features go when training on ``device``, and the one line
    that says so. ``device_free``/``host_free`` default to what the machine reports now."""
    if mode not in RESIDENT_CHOICES:
        raise ConfigError(
            f"data.resident must be one of {'|'.join(RESIDENT_CHOICES)}, got {mode!r}"
        )
    device = torch.device(device)
    accelerated = device.type != "cpu"
    size = f"{_gb(nbytes)} float16"
    if mode == "auto":
        if device_free is None:
            device_free = free_device_bytes(device)
        if host_free is None:
            host_free = available_host_bytes()
        if accelerated and nbytes <= MEMORY_SHARE * device_free:
            mode, why = "device", f"{_gb(device_free)} free on {device}"
        elif nbytes <= MEMORY_SHARE * host_free:
            mode = "host"
            why = f"{_gb(host_free)} host memory available" + (
                f", {_gb(device_free)} free on {device}" if accelerated else ""
            )
        else:
            mode, why = "off", f"more than half of {_gb(host_free)} available host memory"
        prefix = "data.resident=auto chose"
    else:
        why, prefix = "as set", "data.resident"
        if mode == "device" and device.type == "cuda":
            free = free_device_bytes(device) if device_free is None else device_free
            if nbytes > free:
                raise ConfigError(
                    f"data.resident=device: the cached features ({size}) exceed the free memory "
                    f"of {device} ({_gb(free)}); set data.resident=host or auto"
                )
    if mode == "device":
        placement = Placement("device", device, device)
        where = f"on {device}"
    elif mode == "host":
        pin = device.type == "cuda"
        placement = Placement("host", device, torch.device("cpu"), pin)
        where = "in pinned host memory" if pin else "in host memory"
    else:
        placement = Placement("off", device, None)
        where = "on disk, read per item by the DataLoader"
    return placement, f"{prefix} {placement.mode}: cached features ({size}) {where} ({why})"


def feature_shape(encoder: torch.nn.Module, image_size: int) -> tuple[int, int]:
    """(P, C) of the encoder's output: from its attributes, else one forward pass of a copy on
    the meta device (no arithmetic, and the encoder itself does not run)."""
    pixels, channels = getattr(encoder, "num_pixels", None), getattr(encoder, "out_dim", None)
    if isinstance(pixels, int) and isinstance(channels, int):
        return pixels, channels
    try:
        probe = copy.deepcopy(encoder).to("meta").eval()
        probe._forward_hooks.clear()
        device = torch.device("meta")
    except Exception:  # not copyable (holds a lock, a file...): one blank image, for real
        probe, device = encoder, next((p.device for p in encoder.parameters()), None)
    was_training = probe.training
    probe.eval()
    try:
        with torch.no_grad():
            out = probe(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        probe.train(was_training)
    return int(out.shape[1]), int(out.shape[2])


class ResidentFeatures:
    """float16 features (N, P, C) held in memory; ``gather(rows)`` -> float32 (B, P, C) on the
    training device."""

    def __init__(self, tensor: torch.Tensor, device: torch.device) -> None:
        self.tensor = tensor
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.tensor)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """rows: int64 (B,) on the host -> float32 (B, P, C) on the training device."""
        held = self.tensor
        if held.device == self.device or (held.device.type == self.device.type == "cpu"):
            return held.index_select(0, rows.to(held.device, non_blocking=True)).float()
        # Held in host memory, trained on a device: gather on the host (into page-locked memory
        # when the store is), copy the float16 rows, convert on the device.
        staged = torch.empty(
            (len(rows), *held.shape[1:]), dtype=held.dtype, pin_memory=held.is_pinned()
        )
        torch.index_select(held, 0, rows, out=staged)
        return staged.to(self.device, non_blocking=True).float()


class ResidentTrainBatches(Dataset):
    """Training batches by index: ``dataset[indices]`` -> the batch dict of ``collate_train``
    (``dataset[i]``: one item, as the per-item dataset gives it).

    Items are (image, caption) pairs in :class:`~imgcap.data.datasets.CaptionTrainDataset`'s
    order (``captions_per_image="all"``), or images with the caption picked by the sampler
    (``(image, caption)`` index pairs, ``captions_per_image=1``).
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        captions: dict[str, list[str]],
        vocab: Vocabulary,
        features: ResidentFeatures,
        captions_per_image: str | int = "all",
        max_caption_len: int | None = None,
    ) -> None:
        self.image_ids = list(image_ids)
        self.captions = {i: list(captions[i]) for i in self.image_ids}
        self.features = features
        self.one_per_image = str(captions_per_image) == "1"
        encoded = [
            encode_caption(vocab, c, max_caption_len) for i in self.image_ids for c in captions[i]
        ]
        counts = torch.tensor([len(captions[i]) for i in self.image_ids], dtype=torch.long)
        self.counts = counts  # (N,)
        self.offsets = torch.cumsum(counts, 0) - counts  # (N,) first caption row of each image
        self.caption_image = torch.repeat_interleave(torch.arange(len(counts)), counts)  # (M,)
        self.lengths = torch.tensor([len(c) for c in encoded], dtype=torch.long)  # (M,)
        padded = torch.full((len(encoded), int(self.lengths.max())), PAD_ID, dtype=torch.long)
        for row, c in enumerate(encoded):  # once, at setup
            padded[row, : len(c)] = c
        self.tokens = padded.to(features.device)  # (M, T_max)

    def __len__(self) -> int:
        return len(self.image_ids) if self.one_per_image else len(self.lengths)

    def captions_per_item(self) -> list[int] | None:
        """As :meth:`CaptionTrainDataset.captions_per_item`: the sampler picks the captions."""
        return self.counts.tolist() if self.one_per_image else None

    def __getitem__(self, index: torch.Tensor | Sequence | int) -> dict:
        if isinstance(index, int) or (isinstance(index, tuple) and len(index) == 2):
            return self._item(index)
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() == 2:  # (image, caption number) pairs drawn by the sampler
            images = index[:, 0]
            rows = self.offsets[images] + index[:, 1]
        elif self.one_per_image:  # no sampler: a caption at random per image (torch's RNG)
            images = index
            rows = self.offsets[images] + (torch.rand(len(images)) * self.counts[images]).long()
        else:
            rows = index
            images = self.caption_image[rows]
        lengths = self.lengths[rows]  # (B,)
        longest = int(lengths.max())
        device = self.features.device
        captions = self.tokens[:, :longest].index_select(0, rows.to(device, non_blocking=True))
        names = [self.image_ids[i] for i in images.tolist()]
        return {
            "features": self.features.gather(images),
            "captions": captions,
            "lengths": lengths.to(device, non_blocking=True),
            "image_ids": names,
            "references": [list(self.captions[n]) for n in names],
        }

    def _item(self, index: int | tuple[int, int]) -> dict:
        """One item as :class:`~imgcap.data.datasets.CaptionTrainDataset` gives it (the same
        random caption draw for an image index with one caption per image)."""
        if isinstance(index, tuple):
            image, k = int(index[0]), int(index[1])
        elif self.one_per_image:
            image = index
            k = int(torch.randint(int(self.counts[image]), ()).item())
        else:
            image = int(self.caption_image[index])
            k = index - int(self.offsets[image])
        row = int(self.offsets[image]) + k
        name = self.image_ids[image]
        return {
            "features": self.features.gather(torch.tensor([image]))[0],
            "caption": self.tokens[row, : int(self.lengths[row])],
            "image_id": name,
            "references": list(self.captions[name]),
        }


class ResidentEvalBatches(Dataset):
    """Validation/test batches by index: ``dataset[indices]`` -> the batch of ``collate_eval``."""

    def __init__(
        self,
        image_ids: Sequence[str],
        captions: dict[str, list[str]],
        features: ResidentFeatures,
    ) -> None:
        self.image_ids = list(image_ids)
        self.captions = captions
        self.features = features

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: torch.Tensor | Sequence | int) -> dict:
        if isinstance(index, int):  # one item, as CaptionEvalDataset gives it
            name = self.image_ids[index]
            return {
                "features": self.features.gather(torch.tensor([index]))[0],
                "references": list(self.captions[name]),
                "image_id": name,
            }
        index = torch.as_tensor(index, dtype=torch.long)
        names = [self.image_ids[i] for i in index.tolist()]
        return {
            "features": self.features.gather(index),
            "references": [list(self.captions[n]) for n in names],
            "image_ids": names,
        }


class IndexBatches(Sampler):
    """Batches of indices (int64 tensors (B,) or (B, 2)): the ``sampler``'s epoch order (resume
    position included) cut into ``batch_size`` pieces, or 0..N-1 in order without a sampler.
    Forwards ``set_epoch`` so that Lightning (and its distributed wrapper) drive the order."""

    def __init__(
        self, num_items: int, batch_size: int, sampler: ResumableSampler | None = None
    ) -> None:
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.sampler is not None:
            start = self.sampler.take_start()
            order = self.sampler.order_tensor()[start:]
        else:
            order = torch.arange(self.num_items)
        yield from order.split(self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.num_items / self.batch_size)


def as_is(batch: dict) -> dict:
    """The DataLoader's collate for index batches: the dataset already built the batch."""
    return batch
