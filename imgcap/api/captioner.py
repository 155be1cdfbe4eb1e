"""The Python API: caption image files or PIL images with a trained checkpoint.

    from imgcap import Captioner
    cap = Captioner.from_checkpoint("outputs/train/runs/.../checkpoints/best.ckpt", device="cuda")
    cap(["a.jpg", pil_image], beam_size=3)                  # -> ["a dog runs on the grass", ...]
    results = cap(["a.jpg"], attention=True)                # -> [Caption(caption, words, ...)]

Images go through exactly the evaluation transform the model was trained with (shorter side to
S, centre crop S x S, ImageNet normalisation); ``Caption.image`` is that crop, so attention maps
drawn on it land where the model looked. ``caption.py`` and ``evaluate.py`` use this class.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from imgcap.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_image
from imgcap.errors import ConfigError
from imgcap.settings import check_beam_size

ImageInput = str | os.PathLike | Image.Image


@dataclass
class Caption:
    """One image's caption with its attention.

    caption: the words joined by spaces ("" when the model ends at once).
    words: the generated words (no <start>/<end>).
    attention: (L, g, g) float32 on the CPU: the attention map over the g x g encoder grid that
        produced each word (L = len(words)); rows sum to 1.
    image: the S x S RGB crop the model saw (the grid covers it evenly).
    """

    caption: str
    words: list[str]
    attention: torch.Tensor
    image: Image.Image


@dataclass
class SplitCaptions:
    """The captions of a whole split, for each beam size, in loader order.

    hypotheses: beam size -> one caption per image; references: each image's reference
    captions; image_ids: the images, in the same order.
    """

    beam_sizes: list[int]
    hypotheses: dict[int, list[str]] = field(default_factory=dict)
    references: list[list[str]] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else MPS when available, else CPU.

    A named CUDA or MPS device that this machine lacks is a one-line :class:`ConfigError`
    (found before any checkpoint is read, whose loading would fail less clearly)."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if str(device) == "gpu":
        device = "cuda"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"device={str(device)!r} is not a device ({err}); use 'auto', 'cpu', 'cuda' or 'mps'"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        why = (
            "this PyTorch is built without CUDA"
            if torch.version.cuda is None
            else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)"
        )
        raise ConfigError(
            f"device={str(device)!r} but CUDA is not available: {why}; use device='cpu' "
            "(accelerator=cpu in the scripts) or 'auto'"
        )
    if resolved.type == "cuda" and resolved.index is not None:
        if resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA "
                "device(s); use a smaller index or device='cuda'"
            )
    mps = getattr(torch.backends, "mps", None)
    if resolved.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(
            f"device={str(device)!r} but MPS (Apple GPU) is not available on this machine; "
            "use device='cpu' or 'auto'"
        )
    return resolved


class Captioner:
    """A trained captioning model with its preprocessing, ready to caption images in batches.

    Args:
        model: a :class:`~imgcap.captioning_module.CaptioningModule` (put in eval mode here).
        image_size: S, the side of the square crop the model was trained on.
        device: where to run; the model is moved there.
        run_config: the training run's resolved config (from the checkpoint), for reference.
    """

    def __init__(
        self,
        model: Any,
        image_size: int,
        device: str | torch.device | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.image_size = int(image_size)
        self.run_config = run_config or {}
        self._crop = T.Compose(
            [T.Resize(self.image_size, antialias=True), T.CenterCrop(self.image_size)]
        )
        self._normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> Captioner:
        """Load a checkpoint written by ``train.py`` (it carries vocabulary, model and data settings)."""
        from imgcap.captioning_module import load_captioner

        target = resolve_device(device)
        model, run_config = load_captioner(path, map_location=target)
        return cls(model, int(run_config["data"]["image_size"]), target, run_config)

    @property
    def vocab(self):
        return self.model.vocab

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, image: ImageInput) -> tuple[Image.Image, torch.Tensor]:
        """A path or PIL image -> (the S x S RGB crop, its normalised (3, S, S) tensor).

        The tensor equals ``imgcap.data.transforms.eval_transform(S)(image)``: what validation
        and the feature cache feed the encoder.
        """
        if not isinstance(image, Image.Image):
            image = load_image(image)  # one-line DataError for missing/unreadable files
        crop = self._crop(image.convert("RGB"))
        return crop, self._normalize(crop)

    # ------------------------------------------------------------------ captioning
    @torch.inference_mode()
    def caption_features(
        self, features: torch.Tensor, beam_size: int | None = None, max_len: int | None = None
    ):
        """Decode encoder features (B, P, C) -> (captions, DecodeResult)."""
        if beam_size is not None:
            beam_size = check_beam_size(beam_size)
        return self.model.caption_features(
            features.to(self.device), beam_size=beam_size, max_len=max_len
        )

    @torch.inference_mode()
    def caption_batches(
        self,
        batches: Iterable[dict[str, Any]],
        beam_sizes: Sequence[int],
        max_len: int | None = None,
    ) -> SplitCaptions:
        """Caption evaluation batches (the data module's: ``images`` or ``features``,
        ``references``, ``image_ids``) with each beam size, encoding each batch once: the
        module's own evaluation step (:meth:`CaptioningModule.caption_batch`)."""
        sizes = [check_beam_size(k) for k in beam_sizes]
        out = SplitCaptions(sizes, {k: [] for k in sizes})
        for batch in batches:
            on_device = {
                k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            decoded = self.model.caption_batch(on_device, beam_sizes=sizes, max_len=max_len)
            for k, (captions, _) in zip(sizes, decoded, strict=True):
                out.hypotheses[k].extend(captions)
            out.references.extend(batch["references"])
            out.image_ids.extend(batch["image_ids"])
        return out

    @torch.inference_mode()
    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        beam_size: int | None = None,
        max_len: int | None = None,
        attention: bool = False,
        batch_size: int = 16,
    ) -> list[str] | list[Caption]:
        """Caption images (paths or PIL images), ``batch_size`` at a time.

        Returns one caption string per image, or with ``attention=True`` one :class:`Caption`
        per image (caption, words, attention maps, the crop the model saw). ``beam_size``
        defaults to the checkpoint's (1 = greedy).
        """
        if isinstance(images, str | os.PathLike | Image.Image):
            images = [images]
        images = list(images)
        beam = check_beam_size(beam_size) if beam_size is not None else None
        out: list[Any] = []
        for start in range(0, len(images), max(1, int(batch_size))):
            prepared = [self.preprocess(im) for im in images[start : start + batch_size]]
            pixels = torch.stack([t for _, t in prepared]).to(self.device)  # (B, 3, S, S)
            [(captions, result)] = self.model.caption_batch(
                {"images": pixels}, beam_sizes=[beam], max_len=max_len
            )
            if not attention:
                out.extend(captions)
                continue
            grid = int(round(result.alphas[0].size(-1) ** 0.5)) if result.alphas else 0
            for (crop, _), text, alphas in zip(prepared, captions, result.alphas, strict=True):
                words = text.split()
                maps = alphas[: len(words)].float().cpu().reshape(len(words), grid, grid)
                out.append(Caption(text, words, maps, crop))
        return out
