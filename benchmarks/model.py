"""Decoder speed: training step and greedy / beam decoding, with and without caching W_e e.

Run: .venv/bin/python benchmarks/model.py [--train-reps 2] [--decode-reps 5] [--decode-images 8]
     [--threads N]

Sizes follow the Flickr8k setup: B=32 captions of T=20 tokens, P=196 regions (14x14 grid) of
C=2048 (ResNet-50), embed/decoder/attention dims 512, vocabulary 3000. The "recompute" variant
computes the attention projection W_e e at every step instead of once per image, which is what
``precompute_projection=False`` does. Both variants run interleaved in the same process so the
ratio is robust to other load on the machine; times are medians over the repetitions
(after one warm-up run of each variant).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcap.decoders import AttentionLSTMDecoder, beam_search, greedy_decode  # noqa: E402
from imgcap.vocab import END_ID, PAD_ID, START_ID  # noqa: E402

B, T, P, C, DIM, VOCAB, MAX_LEN = 32, 20, 196, 2048, 512, 3000, 20


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _compare(name: str, fns: dict[str, Callable[[], object]], reps: int, per: int) -> None:
    """Warm up once, then alternate the variants ``reps`` times; print medians and the ratio."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(_time(fn) / per)
    med = {k: statistics.median(v) for k, v in times.items()}
    cached, recompute = med["cached"], med["recompute"]
    print(
        f"{name:<34} cached {cached * 1e3:9.2f} ms   recompute {recompute * 1e3:9.2f} ms   "
        f"recompute/cached {recompute / cached:5.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-reps", type=int, default=2)
    parser.add_argument("--decode-reps", type=int, default=5)
    parser.add_argument("--decode-images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device cpu, threads {torch.get_num_threads()}, "
        f"reps train {args.train_reps} / decode {args.decode_reps} (median)"
    )
    print(f"B={B} T={T} P={P} C={C} embed=decoder=attention={DIM} vocab={VOCAB}")

    dec = AttentionLSTMDecoder(VOCAB, C, DIM, DIM, DIM, dropout=0.5)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-4)
    feats = torch.randn(B, P, C)
    caps = torch.randint(4, VOCAB, (B, T))
    caps[:, 0], caps[:, -1] = START_ID, END_ID  # full-length captions: every step runs

    def train_step(cached: bool) -> Callable[[], None]:
        def run() -> None:
            dec.precompute_projection = cached
            dec.train()
            logits, alphas = dec(feats, caps)
            loss = (
                nn.functional.cross_entropy(
                    logits.reshape(-1, VOCAB), caps[:, 1:].reshape(-1), ignore_index=PAD_ID
                )
                + ((1 - alphas.sum(1)) ** 2).mean()
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    _compare(
        "train step (fwd+bwd+Adam), per batch",
        {"cached": train_step(True), "recompute": train_step(False)},
        args.train_reps,
        per=1,
    )

    # decoding: forbid <end> so every image runs all MAX_LEN steps (a fixed amount of work)
    dec.eval()
    with torch.no_grad():
        dec.out.bias[END_ID] = -1e4
    n = args.decode_images
    images = torch.randn(n, P, C)

    def decoding(cached: bool, beam: int) -> Callable[[], None]:
        def run() -> None:
            dec.precompute_projection = cached
            if beam == 1:
                greedy_decode(dec, images, max_len=MAX_LEN)
            else:
                beam_search(dec, images, beam_size=beam, max_len=MAX_LEN)

        return run

    for beam in (1, 3):
        label = "greedy" if beam == 1 else f"beam k={beam}"
        _compare(
            f"{label} ({MAX_LEN} steps), per image",
            {"cached": decoding(True, beam), "recompute": decoding(False, beam)},
            args.decode_reps,
            per=n,
        )
    print(f"(decoding batches of {n} images)")


if __name__ == "__main__":
    main()
