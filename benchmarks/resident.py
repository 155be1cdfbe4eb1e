"""Data overhead of training on resident cached features.

    python benchmarks/resident.py [--images 64] [--batch 32] [--smoke]

One epoch of decoder training steps (forward + backward + Adam; CUDA graphs and bf16 autocast
on a GPU) whose batches come from the resident-feature loader (``data.resident``: index
batches, features and captions gathered where they are held), against the same number of the
same steps on synthetic tensors already on the device. The ratio (resident / synthetic) is the
data overhead; the target on a GPU is <= 1.3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run_all import FULL, SMOKE, caption_batches, compare, make_decoder  # noqa: E402
from imgcap.data.resident import (  # noqa: E402
    IndexBatches,
    ResidentFeatures,
    ResidentTrainBatches,
    as_is,
)
from imgcap.data.sampler import ResumableSampler  # noqa: E402
from imgcap.decoders.cuda_graphs import GraphedUnroll  # noqa: E402
from imgcap.objectives import xe_attention_loss  # noqa: E402
from imgcap.vocab import Vocabulary  # noqa: E402


def resident_set(n_images: int, size: dict, device: torch.device, captions: int = 5):
    """A generated resident training set: float16 features (N, P, C) held on ``device`` (host
    memory for the CPU), ``captions`` captions per image of min_len..max_len tokens."""
    g = torch.Generator().manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(size["vocab"] - 4)])
    ids = [f"{i}.jpg" for i in range(n_images)]
    texts = {}
    for name in ids:
        words = torch.randint(size["min_len"] - 2, size["max_len"] - 1, (captions,), generator=g)
        texts[name] = [
            " ".join(
                f"w{int(w)}" for w in torch.randint(0, size["vocab"] - 4, (int(n),), generator=g)
            )
            for n in words
        ]
    on_device = torch.Generator(device=device).manual_seed(0)  # no host copy of the set
    features = torch.randn(
        n_images, size["P"], size["C"], generator=on_device, device=device, dtype=torch.float16
    )
    return ResidentTrainBatches(ids, texts, vocab, ResidentFeatures(features, device))


def epoch_data_overhead(
    device: torch.device, size: dict, n_images: int, batch: int, reps: int
) -> dict:
    """Seconds of one epoch on resident features vs the same steps on synthetic tensors."""
    data = resident_set(n_images, size, device)
    sampler = ResumableSampler(len(data), seed=0)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,
        sampler=IndexBatches(len(data), batch, sampler),
        collate_fn=as_is,
        generator=torch.Generator(),
    )
    steps = len(loader)
    dec = make_decoder(size, device).train()
    if device.type == "cuda":
        dec.fixed_runner = GraphedUnroll(dec)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-4)
    autocast = device.type == "cuda"
    synthetic = caption_batches(4, batch, size, device)

    def step(features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, alphas = dec(features, captions, lengths)
            loss = xe_attention_loss(logits, alphas, captions[:, 1:], 1.0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    epoch = [0]

    def resident_epoch() -> None:
        loader.sampler.set_epoch(epoch[0])
        epoch[0] += 1
        for b in loader:
            step(b["features"], b["captions"], b["lengths"])

    def synthetic_epoch() -> None:
        for i in range(steps):
            step(*synthetic[i % len(synthetic)])

    med = compare({"synthetic": synthetic_epoch, "resident": resident_epoch}, reps, device)
    return {
        "steps": steps,
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "ratio": med["resident"] / med["synthetic"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    r = epoch_data_overhead(
        device, SMOKE if args.smoke else FULL, args.images, args.batch, args.reps
    )
    print(f"{device}: resident epoch / synthetic steps = {r['ratio']:.3f}  {r}")


if __name__ == "__main__":
    main()
