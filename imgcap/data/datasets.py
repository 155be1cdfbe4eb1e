"""Torch datasets and collate functions.

An *image source* turns an image id into the model input; three kinds exist:

* :class:`ImageFiles`      - decode the JPEG and transform it each time -> ``images`` (3, S, S)
* :class:`PreloadedImages` - decoded + resized once into a uint8 tensor  -> ``images`` (3, S, S)
* :class:`CachedFeatures`  - frozen-encoder outputs from the feature cache -> ``features`` (P, C)

The caption datasets are agnostic of the source; the source's ``key`` names the batch entry.
An image id is the image's path relative to the image folder (``name.jpg`` or
``folder/name.jpg``, see :mod:`imgcap.data.readers`), so ``image_dir / image_id`` is its file.

Batches (B = batch size, T = longest encoded caption in the batch, captions padded with PAD_ID=0):

* train: ``{"images"|"features", "captions": (B, T) int64, "lengths": (B,) int64,
  "image_ids": list[str], "references": list[list[str]]}``; lengths count ``<start>`` and
  ``<end>``; ``references[b]`` are all raw captions of item b's image (``captions[b]`` encodes
  one of them), e.g. for a sequence-level reward;
* val/test: ``{"images"|"features", "references": list[list[str]], "image_ids": list[str]}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from imgcap.data.feature_cache import FeatureStore
from imgcap.data.transforms import load_image, to_uint8, uint8_transform
from imgcap.vocab import END_ID, PAD_ID, Vocabulary


class ImageFiles:
    """Image id -> ``transform(load_image(image_dir / id))``, float32 (3, S, S)."""

    key = "images"

    def __init__(self, image_dir: Path, transform: Callable):
        self.image_dir = Path(image_dir)
        self.transform = transform

    def __call__(self, image_id: str) -> torch.Tensor:
        return self.transform(load_image(self.image_dir / image_id))


class PreloadedImages:
    """All images decoded once into RAM as uint8 (N, 3, S, S); normalised (and augmented) on access.

    Worth it when the set is small: decoding a JPEG costs far more than the decoder step on
    tiny images, and 2000 x 3 x 64 x 64 bytes is only 24 MB.
    """

    key = "images"

    def __init__(
        self,
        image_dir: Path,
        image_ids: Sequence[str],
        image_size: int,
        augment: bool = False,
        quiet: bool = False,
        desc: str = "preload",
    ):
        from tqdm.auto import tqdm

        self.row = {name: i for i, name in enumerate(image_ids)}
        self.pixels = torch.empty((len(image_ids), 3, image_size, image_size), dtype=torch.uint8)
        for i, name in enumerate(
            tqdm(image_ids, desc=desc, unit="img", disable=quiet, dynamic_ncols=True)
        ):
            self.pixels[i] = to_uint8(load_image(Path(image_dir) / name), image_size)
        self.transform = uint8_transform(image_size, augment)

    def __call__(self, image_id: str) -> torch.Tensor:
        return self.transform(self.pixels[self.row[image_id]])


class CachedFeatures:
    """Image id -> cached encoder features, float32 (P, C)."""

    key = "features"

    def __init__(self, store: FeatureStore):
        self.store = store

    def __call__(self, image_id: str) -> torch.Tensor:
        return self.store[image_id]


def encode_caption(vocab: Vocabulary, caption: str, max_len: int | None = None) -> torch.Tensor:
    """Caption -> int64 ids ``[<start>, w..., <end>]``; with ``max_len`` at most that many ids, still ending in ``<end>``."""
    ids = vocab.encode(caption)
    if max_len is not None and len(ids) > max_len:
        ids = ids[: max_len - 1] + [END_ID]
    return torch.tensor(ids, dtype=torch.long)


class CaptionTrainDataset(Dataset):
    """Training pairs (image, caption).

    ``captions_per_image="all"``: one item per (image, caption) pair, so an epoch sees every caption.
    ``captions_per_image=1``: one item per image with a caption drawn at random on every access
    (torch's RNG), or chosen by the sampler when it passes ``(image position, caption)`` keys,
    as the training loader does (so fetching data never draws from the global RNG).
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        captions: dict[str, list[str]],
        vocab: Vocabulary,
        source: Callable[[str], torch.Tensor],
        captions_per_image: str | int = "all",
        max_caption_len: int | None = None,
    ):
        self.image_ids = list(image_ids)
        self.source = source
        self.captions = {i: list(captions[i]) for i in self.image_ids}
        # Encode once: ids are small and re-normalising text in every epoch is wasted work.
        self.encoded = {
            i: [encode_caption(vocab, c, max_caption_len) for c in captions[i]]
            for i in self.image_ids
        }
        self.one_per_image = str(captions_per_image) == "1"
        self.pairs = [(i, k) for i in self.image_ids for k in range(len(self.encoded[i]))]

    def __len__(self) -> int:
        return len(self.image_ids) if self.one_per_image else len(self.pairs)

    def captions_per_item(self) -> list[int] | None:
        """With one caption per image: how many captions each item (image) can draw from, for
        a sampler that picks them (see :class:`~imgcap.data.sampler.ResumableSampler`)."""
        if not self.one_per_image:
            return None
        return [len(self.encoded[i]) for i in self.image_ids]

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        if isinstance(index, tuple):  # (image position, caption number), drawn by the sampler
            image_id = self.image_ids[index[0]]
            k = index[1]
        elif self.one_per_image:
            image_id = self.image_ids[index]
            k = int(torch.randint(len(self.encoded[image_id]), ()).item())
        else:
            image_id, k = self.pairs[index]
        return {
            self.source.key: self.source(image_id),
            "caption": self.encoded[image_id][k],
            "image_id": image_id,
            "references": list(self.captions[image_id]),
        }


class CaptionEvalDataset(Dataset):
    """One item per image with all its reference captions (raw strings)."""

    def __init__(
        self,
        image_ids: Sequence[str],
        captions: dict[str, list[str]],
        source: Callable[[str], torch.Tensor],
    ):
        self.image_ids = list(image_ids)
        self.captions = captions
        self.source = source

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.image_ids[index]
        return {
            self.source.key: self.source(image_id),
            "references": list(self.captions[image_id]),
            "image_id": image_id,
        }


def _stack_input(samples: list[dict]) -> dict[str, torch.Tensor]:
    key = "features" if "features" in samples[0] else "images"
    return {key: torch.stack([s[key] for s in samples])}  # (B, 3, S, S) or (B, P, C)


def collate_train(samples: list[dict]) -> dict:
    """List of train items -> batch dict (captions right-padded with PAD_ID to the longest),
    with each item's image id and all the raw reference captions of its image."""
    caps = [s["caption"] for s in samples]
    lengths = torch.tensor([len(c) for c in caps], dtype=torch.long)  # (B,)
    padded = torch.full((len(caps), int(lengths.max())), PAD_ID, dtype=torch.long)  # (B, T)
    for row, c in enumerate(caps):
        padded[row, : len(c)] = c
    batch = _stack_input(samples)
    batch.update(
        captions=padded,
        lengths=lengths,
        image_ids=[s["image_id"] for s in samples],
        references=[s["references"] for s in samples],
    )
    return batch


def collate_eval(samples: list[dict]) -> dict:
    """List of eval items -> batch dict with ``references`` as a list of lists of strings."""
    batch = _stack_input(samples)
    batch.update(
        references=[s["references"] for s in samples], image_ids=[s["image_id"] for s in samples]
    )
    return batch


class ImageListDataset(Dataset):
    """``dataset[i] = source(image_ids[i])``: the plain image stream used to fill the feature cache."""

    def __init__(self, image_ids: Sequence[str], source: Callable[[str], torch.Tensor]):
        self.image_ids = list(image_ids)
        self.source = source

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.source(self.image_ids[index])
