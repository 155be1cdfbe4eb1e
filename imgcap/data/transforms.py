"""Image loading and the train/eval transforms.

Every transform ends in a float32 tensor of shape (3, S, S), S = ``image_size``, normalised with
the ImageNet mean/std the encoder was trained with. Resizing is "shorter side to S, then centre
crop", which is a plain square resize on square inputs (the generated shapes).

Augmentation never flips horizontally: captions say "to the left of".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from imgcap.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` fully decoded as an RGB PIL image.

    Raises a one-line :class:`DataError` naming the file when it is missing, truncated or not an
    image (PIL refuses truncated JPEGs by default; we keep it that way).
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode inside the try
    except FileNotFoundError:
        raise DataError(
            f"image {path} does not exist; restore it or remove it from the captions"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(
            f"cannot read image {path} ({e}); re-download it, or set data.bad_images=skip to leave it out"
        ) from None


def check_image_file(path: Path) -> str | None:
    """Integrity check before training; returns a reason string, or None when it looks fine.

    JPEGs must start with the SOI marker and end with EOI (a truncated download loses the EOI),
    and must decode (at reduced scale: what fails there fails in the loader too); other formats
    get PIL's header ``verify()``.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        if path.suffix.lower() in JPEG_EXTENSIONS:
            with open(path, "rb") as f:
                head = f.read(2)
                f.seek(max(0, size - 1024))
                tail = f.read()
            if head != b"\xff\xd8":
                return "not a JPEG (no start-of-image marker)"
            # Some writers pad after EOI, so look for it near the end rather than at the last byte.
            # Inside entropy-coded data 0xFF is always followed by 0x00 or RSTn, so FFD9 is EOI.
            if b"\xff\xd9" not in tail:
                return "truncated JPEG (no end-of-image marker)"
            # Markers can be intact around a corrupt header or entropy stream: decode it (at
            # 1/8 scale where libjpeg can, a few ms an image) as the loader will.
            with Image.open(path) as img:
                img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
                img.load()
            return None
        with Image.open(path) as img:
            img.verify()
        return None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        return str(e) or type(e).__name__


def _resize_crop(image_size: int) -> list[Callable]:
    return [T.Resize(image_size, antialias=True), T.CenterCrop(image_size)]


def eval_transform(image_size: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised float32 tensor (3, S, S); deterministic."""
    return T.Compose(
        [*_resize_crop(image_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def train_transform(
    image_size: int = 224, augment: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    """Like :func:`eval_transform`, plus (``augment``) a mild crop/scale and colour jitter."""
    if not augment:
        return eval_transform(image_size)
    return T.Compose(
        [
            T.Resize(image_size, antialias=True),
            T.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def to_uint8(image: Image.Image, image_size: int) -> torch.Tensor:
    """Resize/crop like :func:`eval_transform` but keep uint8 (3, S, S): 4x less RAM for preloading."""
    img = T.Compose(_resize_crop(image_size))(image)
    return T.functional.pil_to_tensor(img)


def uint8_transform(
    image_size: int, augment: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (3, S, S) from :func:`to_uint8` -> normalised float32 (3, S, S), optionally augmented."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    aug = (
        T.Compose(
            [
                T.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
                T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1),
            ]
        )
        if augment
        else None
    )

    def apply(x: torch.Tensor) -> torch.Tensor:
        if aug is not None:
            x = aug(x)
        return (x.float().div_(255.0) - mean) / std

    return apply
