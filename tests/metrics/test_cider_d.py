"""In-process CIDEr-D (the SCST reward) against pycocoevalcap and hand-computed values."""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from imgcap.metrics import CiderD
from imgcap.vocab import normalize_caption

# Four images with 3, 4, 2 and 3 tokenised references (hand-written, no data set needed).
REFS = [
    ["a dog runs on the grass", "a brown dog is running", "the dog runs outside"],
    [
        "a man rides a bike",
        "a person riding a bicycle on the road",
        "a man on a bike",
        "a cyclist on a street",
    ],
    ["two children play in the water", "kids splash in a pool"],
    ["a dog jumps over a fence", "a black dog leaps", "a dog is jumping in the yard"],
]
HYPS = ["a dog runs on the grass", "a man riding a bike", "", "a dog is jumping over a dog"]


def _sample_captions() -> list[list[str]]:
    """Normalised captions of the Flickr8k sample, five per image (skip when it is not set)."""
    value = os.environ.get("IMGCAP_FLICKR8K_SAMPLE")
    if not value:
        pytest.skip("IMGCAP_FLICKR8K_SAMPLE is not set")
    by_image: dict[str, list[str]] = defaultdict(list)
    with open(Path(value) / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_image[row["image"]].append(" ".join(normalize_caption(row["caption"])))
    return list(by_image.values())


def test_equals_pycocoevalcap_on_flickr8k_sample():
    from pycocoevalcap.cider.cider import Cider

    captions = _sample_captions()
    hyps, refs = [c[0] for c in captions], [c[1:] for c in captions]
    gts = dict(enumerate(refs))
    res = {i: [h] for i, h in enumerate(hyps)}
    mean, per_image = Cider().compute_score(gts, res)

    scores = CiderD(refs).scores(hyps, refs)
    assert scores.shape == (len(captions),) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, per_image, rtol=0, atol=1e-6)
    assert scores.mean() == pytest.approx(mean, abs=1e-6)
    assert mean > 0.1  # a real comparison, not zeros against zeros

    # The SCST use: a batch of a few images, each scored several times, idf still from the
    # corpus (the whole sample), so each score is that image's score in the full computation.
    reward = CiderD(refs)
    picked = [7, 3, 3, 150, 7, 42]
    batch = reward.scores([hyps[i] for i in picked], [refs[i] for i in picked])
    np.testing.assert_allclose(batch, per_image[picked], rtol=0, atol=1e-6)


def test_hand_computed_values():
    # Corpus of two images: "a" is in both (idf 0); every other n-gram in one image or none,
    # idf log(2) (pycocoevalcap's log(max(1, df)) treats df 0 and 1 alike).
    cider = CiderD([["a dog runs"], ["a cat sits"]])
    assert cider.ref_len == pytest.approx(math.log(2))
    assert cider.document_frequency("a") == 2 and cider.document_frequency("dog runs") == 1

    # Identical to its reference: cosine 1 for 1-, 2- and 3-grams, 0 for the absent 4-grams.
    assert cider.scores(["a dog runs"], [["a dog runs"]]) == pytest.approx([7.5], abs=1e-12)
    # Averaged over references: the second one shares only "a", whose idf is 0.
    both = cider.scores(["a dog runs"], [["a dog runs", "a cat sits"]])
    assert both == pytest.approx([3.75], abs=1e-12)
    # Clipping: "dog" counts 2 in the hypothesis but 1 in the reference, so the unigram term is
    # min(2, 1) * 1 / (2 * sqrt(2)) (1/sqrt(2) without clipping); "dog dog" matches nothing.
    # One bigram against two: length penalty exp(-1 / (2 * 6**2)).
    clipped = 10 * (1 / (2 * math.sqrt(2))) / 4 * math.exp(-1 / 72)
    assert cider.scores(["dog dog"], [["a dog runs"]]) == pytest.approx([clipped], abs=1e-12)
    # Words outside the corpus: document frequency 0, idf log(2), compared like any other.
    assert cider.scores(["zebra stripes"], [["zebra stripes"]]) == pytest.approx([5.0], abs=1e-12)
    assert cider.document_frequency("zebra") == 0

    four = CiderD([["a dog runs fast"], ["a cat sits"]])
    assert four.scores(["a dog runs fast"], [["a dog runs fast"]]) == pytest.approx([10.0])


def test_empty_hypothesis_scores_zero():
    cider = CiderD(REFS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division or NaN warnings either
        scores = cider.scores(["", "   ", HYPS[0]], [REFS[0], REFS[1], REFS[0]])
        only_empty = cider.scores([""], [REFS[2]])
        empty_ref = cider.scores(["a dog", ""], [[""], ["", "a dog"]])
    assert scores[0] == 0.0 and scores[1] == 0.0 and scores[2] > 0.0
    assert only_empty.tolist() == [0.0]
    assert empty_ref.tolist() == [0.0, 0.0]
    assert cider.scores([], []).shape == (0,)


def test_batch_equals_items_alone_in_any_order():
    batch = CiderD(REFS).scores(HYPS, REFS)
    alone = [CiderD(REFS).scores([h], [r])[0] for h, r in zip(HYPS, REFS, strict=True)]
    np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-12)
    order = [2, 0, 3, 1]
    shuffled = CiderD(REFS).scores([HYPS[i] for i in order], [REFS[i] for i in order])
    np.testing.assert_allclose(shuffled, batch[order], rtol=0, atol=1e-12)
    # Each hypothesis against another image's references: a different score, same invariance.
    crossed = CiderD(REFS).scores(HYPS, REFS[1:] + REFS[:1])
    assert not np.allclose(crossed, batch)
    assert len(set(batch.round(12))) == 4  # the cases differ from each other


def test_duplicate_samples_score_like_one():
    cider = CiderD(REFS)
    once = cider.scores(HYPS, REFS)
    samples = [h for h in HYPS for _ in range(5)]
    refs = [r for r in REFS for _ in range(5)]
    repeated = cider.scores(samples, refs).reshape(len(HYPS), 5)
    np.testing.assert_allclose(repeated, np.repeat(once[:, None], 5, axis=1), rtol=0, atol=1e-12)
    # Scoring again (every reference list now cached) and with a cache-less scorer changes
    # nothing either.
    np.testing.assert_allclose(cider.scores(HYPS, REFS), once, rtol=0, atol=1e-12)
    uncached = CiderD(REFS, cache_size=0).scores(samples, [tuple(r) for r in refs])
    np.testing.assert_allclose(uncached.reshape(len(HYPS), 5), repeated, rtol=0, atol=1e-12)


def test_rejects_malformed_input():
    cider = CiderD(REFS)
    with pytest.raises(ValueError, match="hypotheses"):
        cider.scores(["a dog"], REFS)
    with pytest.raises(ValueError, match="non-empty list"):
        cider.scores(["a dog"], ["a dog runs"])  # a string, not a list of references
    with pytest.raises(ValueError, match="non-empty list"):
        cider.scores(["a dog"], [[]])
    with pytest.raises(ValueError, match="empty"):
        CiderD([])
