"""Validation scoring speed: the fast back end against pycocoevalcap, same captions, same run.

Run: PYTHONPATH=$PWD IMGCAP_FLICKR8K_SAMPLE=... python benchmarks/scoring.py [--images 1000]
     [--reps 3] [--json]

The set is ``--images`` images x 5 references of real captions: the Flickr8k sample's
(IMGCAP_FLICKR8K_SAMPLE) repeated to the size, each image's hypothesis a caption of another
image drawn at random (seeded), so the scores are low but not zero. Without the sample the
captions are generated sentences (said in the output). Per repetition, timed alternately:

- ``compute_caption_metrics(..., meteor=False)``: the pycocoevalcap back end (today's per-epoch
  validation: the Java PTB tokenizer launched for the call, then pycocoevalcap's classes);
- the fast back end's **first call** of a process (every cache cleared: the references are
  tokenised, with one JVM launch when Java is present, and prepared);
- the fast back end **per epoch**: new hypotheses against references already seen (every
  validation after the first of a fit).

Every fast result is checked against the pycocoevalcap result on the same hypotheses (to 1e-6,
BLEU-1..4, ROUGE-L, CIDEr-D). Medians are printed, with the ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcap.metrics import MetricsWarning, compute_caption_metrics, java_available  # noqa: E402
from imgcap.metrics.fast import clear_caches  # noqa: E402

log = logging.getLogger("benchmarks.scoring")
TOLERANCE = 1e-6


def sample_captions() -> tuple[list[list[str]], str]:
    """Five captions per image: the Flickr8k sample's, or generated sentences without it."""
    folder = os.environ.get("IMGCAP_FLICKR8K_SAMPLE")
    if folder and (Path(folder) / "captions.txt").is_file():
        by_image: dict[str, list[str]] = defaultdict(list)
        with open(Path(folder) / "captions.txt", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                by_image[row["image"]].append(row["caption"])
        return [c[:5] for c in by_image.values() if len(c) >= 5], f"Flickr8k sample ({folder})"
    rng = random.Random(0)
    who = ["A man", "A dog", "Two children", "A woman", "A brown dog", "Several people"]
    does = ["is running", "jumps", "is sitting", "plays", "walks", "is climbing"]
    where = ["on the grass", "in the water", "on a rock", "near a tree", "in the snow", "outside"]
    captions = [
        [f"{rng.choice(who)} {rng.choice(does)} {rng.choice(where)} ." for _ in range(5)]
        for _ in range(200)
    ]
    return captions, "generated sentences (IMGCAP_FLICKR8K_SAMPLE not set)"


def scoring_set(images: int, seed: int) -> tuple[list[list[str]], list[list[str]], str]:
    """References (``images`` x 5) and the pool of captions hypotheses are drawn from."""
    captions, source = sample_captions()
    references = [captions[i % len(captions)] for i in range(images)]
    return references, captions, source


def shuffled_hypotheses(references: list[list[str]], pool: list[list[str]], seed: int) -> list[str]:
    """For each image, a caption of another image of the pool."""
    rng = random.Random(seed)
    hyps = []
    for refs in references:
        while True:
            other = rng.choice(pool)
            if other is not refs:
                hyps.append(rng.choice(other))
                break
    return hyps


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def _max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    if sorted(a) != sorted(b):
        raise AssertionError(f"different metrics: {sorted(a)} vs {sorted(b)}")
    return max(abs(a[k] - b[k]) for k in a)


def measure(images: int = 1000, reps: int = 3, seed: int = 0) -> dict[str, object]:
    """Times and checks both back ends; returns the numbers (seconds are medians)."""
    references, pool, source = scoring_set(images, seed)
    times: dict[str, list[float]] = {
        "pycocoevalcap": [],
        "fast_first_call": [],
        "fast_per_epoch": [],
    }
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)  # no Java: one warning, said below
        for rep in range(reps):
            for stage in ("first", "epoch"):
                hyps = shuffled_hypotheses(
                    references, pool, seed=seed + 2 * rep + (stage == "epoch")
                )
                t, reference = _timed(
                    lambda h=hyps: compute_caption_metrics(h, references, meteor=False)
                )
                times["pycocoevalcap"].append(t)
                if stage == "first":
                    clear_caches()
                key = "fast_first_call" if stage == "first" else "fast_per_epoch"
                t, fast = _timed(
                    lambda h=hyps: compute_caption_metrics(
                        h, references, meteor=False, backend="fast"
                    )
                )
                times[key].append(t)
                worst = max(worst, _max_difference(fast, reference))
    if worst > TOLERANCE:
        raise AssertionError(f"fast scores differ from pycocoevalcap by {worst:.3g} > {TOLERANCE}")
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "images": images,
        "references_per_image": 5,
        "captions": source,
        "java": java_available(),
        "reps": reps,
        "seconds": {k: round(v, 4) for k, v in median.items()},
        "per_epoch_vs_pycocoevalcap": round(median["pycocoevalcap"] / median["fast_per_epoch"], 2),
        "first_call_vs_pycocoevalcap": round(
            median["pycocoevalcap"] / median["fast_first_call"], 2
        ),
        "max_abs_difference": worst,
        "last_scores": {k: round(v, 6) for k, v in fast.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    r = measure(args.images, args.reps, args.seed)
    s = r["seconds"]
    log.info(
        "captions: %s; %d images x 5 references; Java: %s", r["captions"], r["images"], r["java"]
    )
    log.info("pycocoevalcap (meteor=False)      %7.3f s", s["pycocoevalcap"])
    log.info("fast, first call of a process     %7.3f s", s["fast_first_call"])
    log.info("fast, per epoch (references seen) %7.3f s", s["fast_per_epoch"])
    log.info(
        "pycocoevalcap / fast: %.1fx per epoch, %.1fx first call; max |difference| %.2g",
        r["per_epoch_vs_pycocoevalcap"],
        r["first_call_vs_pycocoevalcap"],
        r["max_abs_difference"],
    )
    log.info("(medians over %d repetitions; pycocoevalcap timed twice per repetition)", r["reps"])
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
