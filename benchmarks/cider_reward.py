"""CIDEr-D reward speed: imgcap's CiderD.scores against pycocoevalcap's Cider, per SCST batch.

Run: .venv/bin/python benchmarks/cider_reward.py [--images 32] [--samples 5] [--reps 30] [--json]

A batch is ``--images`` images x ``--samples`` sampled captions, each image with five
references: the Flickr8k sample's captions (normalised like the vocabulary) when
IMGCAP_FLICKR8K_SAMPLE names it, else generated sentences. The samples are references of the
same image with words dropped and swapped (seeded), so they overlap their references the way
model samples do. Timed per batch, medians over ``--reps`` batches after one warm-up:

- ``CiderD`` warm: the reward object built once from the corpus (every image's references),
  its reference cache filled by earlier batches (the steady state of training);
- ``CiderD`` cold: ``cache_size=0``, every reference list prepared again in each call;
- pycocoevalcap: ``Cider().compute_score`` on the same batch, one key per sample.

The two do not compute the same reward: pycocoevalcap takes document frequencies from the
batch's own references (each image counted once per sample), ``CiderD`` from its corpus. Before
timing, the script checks that ``CiderD`` built from the batch's reference lists, one per
sample, reproduces pycocoevalcap's per-sample scores, so the ratio compares time only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcap.metrics import CiderD  # noqa: E402
from imgcap.vocab import normalize_caption  # noqa: E402

_WORDS = {
    "who": "a man|a woman|two dogs|a child|a girl in red|a brown dog|three people|a boy".split("|"),
    "does": "runs|jumps|plays|sits|walks|stands|climbs|swims|rides a bike".split("|"),
    "where": "on the grass|in the water|near a tree|on a rock|in the snow|by the road".split("|"),
}


def _corpus(rng: random.Random) -> tuple[list[list[str]], str]:
    """Five tokenised references per image, and where they come from."""
    folder = os.environ.get("IMGCAP_FLICKR8K_SAMPLE")
    if folder and (Path(folder) / "captions.txt").is_file():
        by_image: dict[str, list[str]] = defaultdict(list)
        with open(Path(folder) / "captions.txt", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                by_image[row["image"]].append(" ".join(normalize_caption(row["caption"])))
        return [caps[:5] for caps in by_image.values()], f"Flickr8k sample ({folder})"
    images = [
        [" ".join(rng.choice(_WORDS[part]) for part in ("who", "does", "where")) for _ in range(5)]
        for _ in range(1000)
    ]
    return images, "1000 generated images"


def _sample(caption: str, rng: random.Random) -> str:
    """A model-like sample: a reference with some words dropped and two neighbours swapped."""
    words = [w for w in caption.split() if rng.random() > 0.15]
    if len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _median_time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    corpus, source = _corpus(rng)
    batches = []
    for _ in range(args.reps + 1):
        picked = rng.sample(range(len(corpus)), args.images)
        refs = [corpus[i] for i in picked for _ in range(args.samples)]
        hyps = [_sample(rng.choice(r), rng) for r in refs]
        batches.append((hyps, refs))

    # Same formula: with the batch's own reference lists as corpus, CiderD is pycocoevalcap.
    hyps, refs = batches[0]
    _, coco = Cider().compute_score(dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)})
    diff = float(np.abs(CiderD(refs).scores(hyps, refs) - coco).max())
    assert diff < 1e-9, f"CiderD differs from pycocoevalcap by {diff}"

    warm = CiderD(corpus)
    cold = CiderD(corpus, cache_size=0)
    for h, r in batches:
        warm.scores(h, r)  # fill the cache, as earlier epochs would

    def timed(fn: Callable[[list[str], list[list[str]]], object]) -> float:
        it = iter(batches[1:] * 2)
        return _median_time(lambda: fn(*next(it)), args.reps)

    def pycoco(h: list[str], r: list[list[str]]) -> object:
        return Cider().compute_score(dict(enumerate(r)), {i: [x] for i, x in enumerate(h)})

    t_warm = timed(warm.scores)
    t_cold = timed(cold.scores)
    t_coco = timed(pycoco)
    n = args.images * args.samples
    print(f"references: {source}; batch {args.images} images x {args.samples} samples = {n}")
    print(f"max |CiderD - pycocoevalcap| on the batch's own references: {diff:.1e}")
    print(f"CiderD.scores, warm cache      {t_warm * 1e3:8.2f} ms / batch")
    print(f"CiderD.scores, no cache        {t_cold * 1e3:8.2f} ms / batch")
    print(f"pycocoevalcap Cider()          {t_coco * 1e3:8.2f} ms / batch")
    print(
        f"pycocoevalcap / CiderD: {t_coco / t_warm:.1f}x (warm), {t_coco / t_cold:.1f}x (no cache)"
    )
    print(
        f"(medians over {args.reps} batches after a warm-up, threads: OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')})"
    )
    if args.json:
        result = {
            "references": source,
            "images": args.images,
            "samples": args.samples,
            "reps": args.reps,
            "max_abs_diff_same_corpus": diff,
            "ciderd_warm_ms": t_warm * 1e3,
            "ciderd_no_cache_ms": t_cold * 1e3,
            "pycocoevalcap_ms": t_coco * 1e3,
            "ratio_warm": t_coco / t_warm,
            "ratio_no_cache": t_coco / t_cold,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
