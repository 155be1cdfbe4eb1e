"""Data-layer speed: loader throughput, and an epoch with vs without the feature cache.

    .venv/bin/python benchmarks/data.py [--images 320] [--workers 2]

(1) Train-loader images/s at 224 px with ``--workers`` workers: on generated shapes (written at
    224 px), and on the real Flickr8k sample too when IMGCAP_FLICKR8K_SAMPLE is set.
(2) One training epoch's data + frozen-encoder cost with the feature cache vs without, in the same
    run: torchvision ResNet-18 (weights=None, frozen, eval mode, 7x7 grid -> (B, 49, 512)).
    The decoder is left out on purpose: it costs the same either way.
(3) The cache build's pixel pipeline: threaded reads + Pillow decode/resize + batched normalise
    (imgcap.data.pixels, what the build uses now) vs the per-image DataLoader over ImageFiles
    with ``--workers`` workers (before), images/s on the same files, equal pixels checked.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from imgcap.data.datamodule import CaptionDataModule
from imgcap.data.shapes import generate_shapes


class FrozenResNet18(nn.Module):
    """(B, 3, 224, 224) -> (B, 49, 512); random weights are fine for timing."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.body = nn.Sequential(*list(resnet18(weights=None).children())[:-2])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(2).transpose(1, 2)  # (B, P, C)


def loader_rate(root: Path, cache: Path, workers: int, epochs: int = 2) -> float:
    """Images/s of the train loader (one caption per image), best of ``epochs`` epochs."""
    dm = CaptionDataModule(
        root=str(root),
        cache_dir=str(cache),
        image_size=224,
        batch_size=32,
        num_workers=workers,
        persistent_workers=True,
        captions_per_image=1,
        min_word_freq=1,
        quiet=True,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    best = 0.0
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["image_ids"])
        best = max(best, n / (time.perf_counter() - t0))
    return best


def epoch_seconds(dm: CaptionDataModule, encoder: nn.Module | None) -> float:
    """One pass over the train loader; without the cache the frozen encoder runs on every batch."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in dm.train_dataloader():
            feats = encoder(batch["images"]) if encoder is not None else batch["features"]
            assert feats.dim() == 3
    return time.perf_counter() - t0


def pixel_rates(root: Path, workers: int, batch: int = 32, reps: int = 2) -> dict[str, float]:
    """Images/s of the cache build's pixel pipeline: batched (threads) vs per-image loader."""
    from torch.utils.data import DataLoader

    from imgcap.data.annotations import load_annotations
    from imgcap.data.datasets import ImageFiles, ImageListDataset
    from imgcap.data.pixels import ImageBatches
    from imgcap.data.transforms import eval_transform

    ann = load_annotations(root, 0)
    ids = [n for split in ("train", "val", "test") for n in ann.splits[split]]

    def per_image() -> torch.Tensor:
        files = ImageListDataset(ids, ImageFiles(ann.image_dir, eval_transform(224)))
        return torch.cat(list(DataLoader(files, batch_size=batch, num_workers=workers)))

    def batched() -> torch.Tensor:
        return torch.cat(list(ImageBatches(ann.image_dir, ids, 224).batches(batch)))

    best = {"per_image": 0.0, "batched": 0.0}
    same = True
    for _ in range(reps):
        for name, fn in (("per_image", per_image), ("batched", batched)):
            t0 = time.perf_counter()
            pixels = fn()
            best[name] = max(best[name], len(ids) / (time.perf_counter() - t0))
            if name == "per_image":
                reference = pixels
            else:
                same = same and torch.equal(pixels, reference)
    return {**best, "ratio": best["batched"] / best["per_image"], "identical": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=320, help="shapes images to generate at 224 px"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        shapes = generate_shapes(tmp / "shapes", num_images=args.images, image_size=224, seed=0)
        print(f"generated {args.images} shapes images at 224 px in {time.perf_counter() - t0:.2f}s")

        rate = loader_rate(shapes, tmp / "c1", args.workers)
        print(f"(1) train loader, shapes 224 px, {args.workers} workers: {rate:.0f} images/s")
        sample = os.environ.get("IMGCAP_FLICKR8K_SAMPLE")
        if sample:
            rate = loader_rate(Path(sample), tmp / "c2", args.workers)
            print(
                f"(1) train loader, Flickr8k sample (real JPEGs) 224 px, {args.workers} workers: {rate:.0f} images/s"
            )

        root = Path(sample) if sample else shapes
        r = pixel_rates(root, args.workers)
        print(
            f"(3) cache-build pixels ({'Flickr8k sample' if sample else 'shapes'}, 224 px): "
            f"batched {r['batched']:.0f} images/s vs per-image loader ({args.workers} workers) "
            f"{r['per_image']:.0f} images/s -> {r['ratio']:.2f}x; identical pixels: {r['identical']}"
        )

        result = cache_speedup(shapes, tmp / "c3", args.workers)
        print(
            f"(2) one epoch ({result['train_images']} train images, frozen ResNet-18 weights=None, 224 px, {args.workers} workers):"
        )
        print(
            f"    without cache {result['without_s']:.2f}s, with cache {result['with_s']:.3f}s -> "
            f"{result['ratio']:.0f}x faster (one-off cache build for train+val: {result['build_s']:.2f}s)"
        )


def cache_speedup(shapes: Path, cache_dir: Path, workers: int) -> dict[str, float]:
    """One epoch's data + frozen-encoder cost without vs with the feature cache (224 px)."""
    common = dict(
        root=str(shapes),
        cache_dir=str(cache_dir),
        image_size=224,
        batch_size=32,
        num_workers=workers,
        captions_per_image=1,
        min_word_freq=1,
        quiet=True,
    )
    encoder = FrozenResNet18()
    plain = CaptionDataModule(**common)
    plain.setup("fit")
    cached = CaptionDataModule(**common, cache_features=True)
    cached.prepare_vocabulary()
    cached.attach_feature_encoder(encoder, {"arch": "resnet18", "weights": None, "grid": 7})
    t0 = time.perf_counter()
    cached.setup("fit")
    build = time.perf_counter() - t0
    without = epoch_seconds(plain, encoder)
    with_cache = min(epoch_seconds(cached, None) for _ in range(2))
    return {
        "train_images": len(plain.datasets["train"]),
        "without_s": without,
        "with_s": with_cache,
        "ratio": without / with_cache,
        "build_s": build,
    }


if __name__ == "__main__":
    main()
