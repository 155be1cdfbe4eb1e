"""The fast scoring back end: equal to pycocoevalcap on the same tokens, tokens equal to Java's."""

from __future__ import annotations

import csv
import random
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from imgcap.metrics import (
    METRIC_KEYS,
    MetricsWarning,
    compute_caption_metrics,
    java_available,
    python_ptb_tokenize,
    scoring_info,
)
from imgcap.metrics import fast as metrics_fast
from imgcap.metrics import ptb as metrics_ptb
from imgcap.metrics.fast import fast_caption_scores, tokenize_for_fast_scoring
from imgcap.vocab import Vocabulary

needs_java = pytest.mark.skipif(not java_available(), reason="Java is not installed")
FAST_KEYS = [k for k in METRIC_KEYS if k != "METEOR"]


def _pycocoevalcap_on_tokens(hyps: list[str], refs: list[list[str]]) -> dict[str, float]:
    """pycocoevalcap's own classes on already tokenised captions."""
    gts = dict(enumerate(refs))
    res = {i: [h] for i, h in enumerate(hyps)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def _assert_equal(ours: dict[str, float], raw: dict[str, float]) -> None:
    assert sorted(ours) == sorted(raw)
    for key, value in raw.items():
        assert ours[key] == pytest.approx(value, abs=1e-6, rel=0), key


def _generated_set(seed: int, images: int = 120) -> tuple[list[str], list[list[str]]]:
    """Tokenised captions over a small vocabulary: repeated words and n-grams, reference counts
    of 1 to 6 and lengths of 1 to 25, empty hypotheses, an empty reference, repeated images."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]

    def caption(low: int, high: int) -> str:
        return " ".join(
            rng.choice(words[: rng.randint(3, 30)]) for _ in range(rng.randint(low, high))
        )

    refs = [[caption(1, 25) for _ in range(rng.randint(1, 6))] for _ in range(images)]
    hyps = [caption(1, 20) for _ in range(images)]
    hyps[0] = hyps[1] = ""  # an empty generated caption
    refs[2] = [*refs[2], ""]  # a reference of punctuation only tokenises to ""
    hyps[3] = refs[3][0]  # a perfect match
    hyps[4] = " ".join(refs[4][0].split()[:2])  # far shorter than every reference
    refs[5], hyps[5] = refs[6], hyps[6]  # the same image twice
    return hyps, refs


def _sample_captions(folder: Path) -> list[list[str]]:
    by_image: dict[str, list[str]] = defaultdict(list)
    with open(folder / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_image[row["image"]].append(row["caption"])
    return list(by_image.values())


def _shuffled_hypotheses(captions: list[list[str]], seed: int) -> list[str]:
    """For each image, a caption of another image: real text that scores low but not zero."""
    rng = random.Random(seed)
    n = len(captions)
    return [captions[(i + rng.randrange(1, n)) % n][rng.randrange(5)] for i in range(n)]


# --------------------------------------------------------------------------------------------
# Scorers on the same tokens
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_scorers_equal_pycocoevalcap_on_generated_tokens(seed):
    hyps, refs = _generated_set(seed)
    ours = fast_caption_scores(hyps, refs)
    _assert_equal(ours, _pycocoevalcap_on_tokens(hyps, refs))
    assert 0.0 < ours["BLEU-4"] < ours["BLEU-1"] < 1.0 and ours["CIDEr"] > 0.0


def test_fast_scorers_reuse_references_across_calls():
    """Validation scores new hypotheses against the same references every epoch: the prepared
    reference side must give the numbers of a fresh computation."""
    hyps, refs = _generated_set(3)
    first = fast_caption_scores(hyps, refs)
    other = list(reversed(hyps))
    again = fast_caption_scores(other, refs)
    _assert_equal(again, _pycocoevalcap_on_tokens(other, refs))
    assert again != first
    assert fast_caption_scores(hyps, refs) == first


def test_fast_scorers_on_a_single_image_and_a_perfect_match():
    refs = [["a dog runs on the grass", "a brown dog running"]]
    ours = fast_caption_scores(["a dog runs on the grass"], refs)
    _assert_equal(ours, _pycocoevalcap_on_tokens(["a dog runs on the grass"], refs))
    assert ours["BLEU-4"] == pytest.approx(1.0) and ours["ROUGE-L"] == pytest.approx(1.0)


def test_fast_scorers_equal_pycocoevalcap_on_sample_tokens(flickr8k_sample):
    captions = _sample_captions(flickr8k_sample)
    refs = [python_ptb_tokenize(c) for c in captions]
    hyps = python_ptb_tokenize(_shuffled_hypotheses(captions, seed=0))
    _assert_equal(fast_caption_scores(hyps, refs), _pycocoevalcap_on_tokens(hyps, refs))
    # Leave-one-out: each image's first caption against the other four.
    hyps, refs = [r[0] for r in refs], [r[1:] for r in refs]
    ours = fast_caption_scores(hyps, refs)
    _assert_equal(ours, _pycocoevalcap_on_tokens(hyps, refs))
    assert ours["CIDEr"] > 0.3


# --------------------------------------------------------------------------------------------
# The entry point: backend="fast" against backend="pycocoevalcap" on raw text
# --------------------------------------------------------------------------------------------


def test_backends_agree_on_sample_text(flickr8k_sample):
    captions = _sample_captions(flickr8k_sample)
    hyps = _shuffled_hypotheses(captions, seed=1)
    hyps[0], hyps[1] = "", " . "
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)  # no Java: the imitation in both
        reference = compute_caption_metrics(hyps, captions, meteor=False)
        assert scoring_info(reference)["scorer"] == "pycocoevalcap"
        fast = compute_caption_metrics(hyps, captions, meteor=False, backend="fast")
    assert list(fast) == FAST_KEYS
    _assert_equal(fast, reference)
    info = scoring_info(fast)
    assert info["scorer"] == "fast" and info["meteor"] is False
    assert info["tokenizer"] == (
        metrics_ptb.TOKENIZER_JAVA if java_available() else metrics_ptb.TOKENIZER_PYTHON
    )


def test_backends_agree_without_java(monkeypatch, tmp_path, flickr8k_sample):
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without java
    captions = _sample_captions(flickr8k_sample)[:60]
    hyps = _shuffled_hypotheses(captions, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)
        reference = compute_caption_metrics(hyps, captions)
        fast = compute_caption_metrics(hyps, captions, backend="fast")
    assert "METEOR" not in fast
    _assert_equal(fast, reference)
    assert scoring_info(fast)["tokenizer"] == metrics_ptb.TOKENIZER_PYTHON


def test_unknown_backend_is_one_clear_error():
    with pytest.raises(ValueError, match="backend='bleu' is not one of pycocoevalcap, fast"):
        compute_caption_metrics(["a dog"], [["a dog"]], backend="bleu")


def test_references_are_tokenised_once_per_process(monkeypatch):
    calls: list[int] = []
    real = metrics_fast.ptb_tokenize

    def counting(sentences):
        calls.append(len(sentences))
        return real(sentences)

    monkeypatch.setattr(metrics_fast, "ptb_tokenize", counting)
    refs = [[f"A dog number {i} runs .", "The dog is brown , and fast ."] for i in range(7)]
    hyps = ["a dog runs"] * 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)
        first = compute_caption_metrics(hyps, refs, meteor=False, backend="fast")
        second = compute_caption_metrics(["a brown dog"] * 7, refs, meteor=False, backend="fast")
        third = compute_caption_metrics(hyps, refs, meteor=False, backend="fast")
    assert calls == [8]  # the 8 distinct references, in the first call only
    assert first == third and second != first


# --------------------------------------------------------------------------------------------
# Tokens: the Python tokenizer against the Java one
# --------------------------------------------------------------------------------------------


@needs_java
def test_python_tokenizer_matches_java_on_every_sample_caption(flickr8k_sample):
    """Every caption of the sample, both of its annotation files (references and, in the
    benchmark, hypotheses drawn from other images)."""
    captions = {c for caps in _sample_captions(flickr8k_sample) for c in caps}
    token_file = flickr8k_sample / "Flickr8k_text" / "Flickr8k.token.txt"
    if token_file.is_file():
        for line in token_file.read_text(encoding="utf-8").splitlines():
            if "\t" in line:
                captions.add(line.split("\t", 1)[1])
    captions = sorted(captions)
    java = metrics_ptb._java_ptb_tokenize(captions)
    python = python_ptb_tokenize(captions)
    assert [(c, j, p) for c, j, p in zip(captions, java, python, strict=True) if j != p] == []


@needs_java
def test_python_tokenizer_matches_java_on_generated_captions(flickr8k_sample):
    """What validation tokenises every epoch: vocabulary words joined by spaces, with <unk>,
    numbers, and the words the PTB lexer splits (cannot, gonna, ...)."""
    texts = [c for caps in _sample_captions(flickr8k_sample) for c in caps]
    vocab = Vocabulary.build(texts, min_word_freq=1)
    words = [*vocab.itos[3:], "cannot", "gonna", "wanna", "gotta", "2", "10", "1st", "3d"]
    rng = random.Random(0)
    generated = [
        " ".join(rng.choice(words) for _ in range(rng.randint(1, 20))) for _ in range(3000)
    ]
    generated += [vocab.decode(vocab.encode(t)) for t in texts]  # sample captions, normalised
    java = metrics_ptb._java_ptb_tokenize(generated)
    python = python_ptb_tokenize(generated)
    assert [(g, j, p) for g, j, p in zip(generated, java, python, strict=True) if j != p] == []


@needs_java
def test_adjacent_numbers_in_hypotheses_get_java_tokens():
    """Java joins some runs of numbers ("12 123456", "12 123 123") into one token (with no-break
    spaces) where the imitation splits them; ROUGE-L would see the difference, so the fast back
    end asks Java for hypotheses with adjacent multi-digit numbers."""
    hyps = ["a dog with 12 123456 on its shirt", "a dog runs"]
    java = metrics_ptb._java_ptb_tokenize(hyps)
    assert java[0] != python_ptb_tokenize(hyps)[0] and java[1] == "a dog runs"
    hyp_tokens, _, tokenizer = tokenize_for_fast_scoring(hyps, [["a dog"], ["a dog"]])
    assert tokenizer == metrics_ptb.TOKENIZER_JAVA
    assert hyp_tokens == java
