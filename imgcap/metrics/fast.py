"""BLEU-1..4, ROUGE-L and CIDEr-D in process: pycocoevalcap's numbers without its per-call cost.

The per-epoch validation scores thousands of captions against the same references every
epoch. This back end of :func:`imgcap.metrics.compute_caption_metrics` reproduces pycocoevalcap
(to float rounding, far below 1e-6) on the same PTB tokens, with two savings:

- **Tokens.** References are tokenised by :func:`~imgcap.metrics.ptb.ptb_tokenize` (the Java
  PTBTokenizer when ``java`` is on PATH, as ``evaluate.py`` does) once per process and kept by
  caption text, so only the first validation starts a JVM. Hypotheses, new every epoch, go
  through the Python imitation of the tokenizer, which gives the Java tokens on the vocabulary
  words a model emits (tests compare both on real and generated captions); the one pattern it is
  known to miss there (adjacent multi-digit numbers, some of which Java joins into one token)
  is sent to Java when it is present.
- **Scoring.** BLEU keeps each image's reference n-gram maxima across calls; ROUGE-L runs the
  longest-common-subsequence recurrence for all (hypothesis, reference) pairs at once with numpy;
  CIDEr-D is :class:`~imgcap.metrics.cider_d.CiderD` with the document frequencies of the
  references scored (pycocoevalcap's rule), kept for the next call with the same references.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgcap.metrics.cider_d import CiderD, _ngrams
from imgcap.metrics.ptb import (
    _CHUNK_MEMO,
    TOKENIZER_JAVA,
    TOKENIZER_PYTHON,
    _java_ptb_tokenize,
    java_available,
    last_tokenizer,
    ptb_tokenize,
    python_ptb_tokenize,
)

__all__ = ["clear_caches", "fast_caption_scores", "tokenize_for_fast_scoring"]

_BLEU_N = 4
_ROUGE_BETA = 1.2
# Java's lexer joins some runs of numbers into one token with no-break spaces ("12 123456",
# "12 123 123", phone-number shapes); the Python imitation does not. This matches a superset:
# hypotheses with two adjacent numbers of two or more digits.
_ADJACENT_NUMBERS = re.compile(r"(?<!\S)\d{2,}\s+\d{2,}(?!\S)")

# Reference tokens by caption text, one table per tokenizer (a test may hide Java mid-process).
_REFERENCE_TOKENS: dict[str, dict[str, str]] = {TOKENIZER_JAVA: {}, TOKENIZER_PYTHON: {}}
_MAX_CACHED_REFERENCES = 500_000
# Reference-side BLEU statistics by tuple of tokenised references (lengths, n-gram maxima).
_BLEU_REFS: dict[tuple[str, ...], tuple[tuple[int, ...], dict[tuple[str, ...], int]]] = {}
_MAX_CACHED_BLEU_REFS = 200_000
# What ROUGE-L and CIDEr-D prepare from the latest reference sets (the sanity check's and the
# full split's), by tuple of tokenised reference lists.
_REFERENCE_SETS: dict[tuple[tuple[str, ...], ...], _ReferenceSet] = {}
_MAX_CACHED_REFERENCE_SETS = 2


def clear_caches() -> None:
    """Forget every reference token, prepared reference set and memoised word: the state of a
    new process (benchmarks time the first call of a fit with it)."""
    for table in _REFERENCE_TOKENS.values():
        table.clear()
    _BLEU_REFS.clear()
    _REFERENCE_SETS.clear()
    _CHUNK_MEMO.clear()


def tokenize_for_fast_scoring(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]], str]:
    """PTB tokens of both sides, and the name of the tokenizer that made the references'.

    References: :func:`ptb_tokenize` once per caption text and process. Hypotheses: the Python
    imitation, or Java (one launch for all of them) for those matching a pattern the imitation
    is known to tokenise differently, when Java is available.
    """
    tokenizer = TOKENIZER_JAVA if java_available() else TOKENIZER_PYTHON
    table = _REFERENCE_TOKENS[tokenizer]
    missing = sorted({r for refs in references for r in refs if r not in table})
    if missing:
        tokens = ptb_tokenize(missing)
        if last_tokenizer() != tokenizer:  # the JVM failed: the imitation for every reference
            tokenizer = TOKENIZER_PYTHON
            table = _REFERENCE_TOKENS[tokenizer]
            missing = sorted({r for refs in references for r in refs if r not in table})
            tokens = python_ptb_tokenize(missing)
    new = dict(zip(missing, tokens, strict=True)) if missing else {}
    ref_tokens = [[new[r] if r in new else table[r] for r in refs] for refs in references]
    if len(table) + len(new) > _MAX_CACHED_REFERENCES:
        table.clear()
    table.update(new)

    hyp_tokens = python_ptb_tokenize(hypotheses)
    if tokenizer == TOKENIZER_JAVA:
        odd = [i for i, h in enumerate(hypotheses) if _ADJACENT_NUMBERS.search(h)]
        if odd:
            try:
                java = _java_ptb_tokenize([hypotheses[i] for i in odd])
            except (OSError, RuntimeError):  # keep the imitation's tokens for these few
                java = [hyp_tokens[i] for i in odd]
            for i, tokens in zip(odd, java, strict=True):
                hyp_tokens[i] = tokens
    return hyp_tokens, ref_tokens, tokenizer


def fast_caption_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of tokenised captions, equal to pycocoevalcap's
    ``Bleu(4)``, ``Rouge()`` and ``Cider()`` on the same tokens.

    Args:
        hypotheses: one tokenised caption per image (words separated by single spaces).
        references: for each image, its tokenised reference captions (at least one).
    """
    prepared = _reference_set(references)
    scores = corpus_bleu(hypotheses, references)
    scores["ROUGE-L"] = rouge_l(hypotheses, references, prepared.rouge)
    scores["CIDEr"] = cider_d(hypotheses, references, prepared.cider)
    return scores


# ------------------------------------------------------------------------------------- BLEU
def _bleu_reference_stats(
    refs: Sequence[str],
) -> tuple[tuple[int, ...], dict[tuple[str, ...], int]]:
    key = tuple(refs)
    stats = _BLEU_REFS.get(key)
    if stats is None:
        lengths = []
        maxima: dict[tuple[str, ...], int] = {}
        for ref in refs:
            words = ref.split()
            lengths.append(len(words))
            for gram, count in Counter(_ngrams(words, _BLEU_N)).items():
                if count > maxima.get(gram, 0):
                    maxima[gram] = count
        if len(_BLEU_REFS) >= _MAX_CACHED_BLEU_REFS:
            _BLEU_REFS.clear()
        stats = _BLEU_REFS[key] = (tuple(lengths), maxima)
    return stats


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 as pycocoevalcap's ``BleuScorer.compute_score(option="closest")``:
    clipped n-gram matches and candidate n-grams summed over images, the reference length of
    each image the one closest to its hypothesis (the shorter on a tie), and the same 1e-9 and
    1e-15 guards, in the same order of floating-point operations."""
    small, tiny = 1e-9, 1e-15
    correct = [0] * _BLEU_N
    guess = [0] * _BLEU_N
    test_total = 0
    ref_total = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        ref_lengths, maxima = _bleu_reference_stats(refs)
        words = hyp.split()
        test_len = len(words)
        test_total += test_len
        ref_total += min((abs(n - test_len), n) for n in ref_lengths)[1]
        for k in range(_BLEU_N):
            guess[k] += max(0, test_len - k)
        counts = Counter(_ngrams(words, _BLEU_N))
        for gram in counts.keys() & maxima.keys():  # only shared n-grams add matches
            correct[len(gram) - 1] += min(maxima[gram], counts[gram])
    bleus = []
    product = 1.0
    for k in range(_BLEU_N):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        bleus.append(product ** (1.0 / (k + 1)))
    ratio = (test_total + tiny) / (ref_total + small)
    if ratio < 1:
        bleus = [b * math.exp(1 - 1 / ratio) for b in bleus]
    return {f"BLEU-{k + 1}": float(b) for k, b in enumerate(bleus)}


# ---------------------------------------------------------------------------------- ROUGE-L
@dataclass(frozen=True)
class _RougeReferences:
    """The reference side of ROUGE-L for one reference set, as word-id arrays (P pairs)."""

    ids: dict[str, int]  # reference word -> id
    words: np.ndarray  # (P, Lr) int64: word ids, -2 pads (never equal to a hypothesis id)
    length: np.ndarray  # (P,) words per reference, split on " " as pycocoevalcap does
    image: np.ndarray  # (P,) the image of each reference
    starts: np.ndarray  # (N,) index of each image's first reference

    @classmethod
    def build(cls, references: Sequence[Sequence[str]]) -> _RougeReferences:
        ids: dict[str, int] = {}
        rows = [
            [ids.setdefault(w, len(ids)) for w in r.split(" ")] for rs in references for r in rs
        ]
        length = np.array([len(w) for w in rows])
        words = np.full((len(rows), length.max()), -2, dtype=np.int64)
        for i, row in enumerate(rows):
            words[i, : len(row)] = row
        counts = [len(r) for r in references]
        image = np.repeat(np.arange(len(references)), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(ids, words, length, image, starts)


def rouge_l(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    prepared: _RougeReferences | None = None,
) -> float:
    """Mean ROUGE-L F (beta 1.2) as pycocoevalcap's ``Rouge``: per image, the best precision
    and the best recall over its references, words split on single spaces (an empty caption is
    one empty word, as there).

    The LCS of every (hypothesis, reference) pair at once: one numpy step per reference word,
    using ``L[i][j] = max(L[i][j-1], L[i-1][j], L[i-1][j-1] + match)`` so that a row is a
    running maximum of values from the row above.
    """
    refs = prepared or _RougeReferences.build(references)
    # Words no reference has get -1: they match nothing, like the padding.
    hyp_words = [[refs.ids.get(w, -1) for w in h.split(" ")] for h in hypotheses]
    hyp_len = np.array([len(w) for w in hyp_words])  # (N,)
    hyp_ids = np.full((len(hyp_words), hyp_len.max()), -1, dtype=np.int64)  # (N, Lh)
    for i, words in enumerate(hyp_words):
        hyp_ids[i, : len(words)] = words

    pair_hyp = hyp_ids[refs.image]  # (P, Lh)
    row = np.zeros((len(refs.image), pair_hyp.shape[1] + 1), dtype=np.int64)  # L[i-1][0..Lh]
    for r in range(refs.words.shape[1]):
        match = refs.words[:, r : r + 1] == pair_hyp  # (P, Lh)
        best = np.maximum(row[:, 1:], row[:, :-1] + match)
        row[:, 1:] = np.maximum.accumulate(best, axis=1)
    lcs = row[:, -1].astype(np.float64)  # padding never matches: the last column is the LCS

    precision = lcs / hyp_len[refs.image]
    recall = lcs / refs.length
    p = np.maximum.reduceat(precision, refs.starts)  # (N,)
    r = np.maximum.reduceat(recall, refs.starts)
    beta2 = _ROUGE_BETA**2
    both = (p != 0) & (r != 0)
    score = np.zeros(len(hypotheses))
    score[both] = ((1 + beta2) * p[both] * r[both]) / (r[both] + beta2 * p[both])
    return float(np.mean(score))


# ---------------------------------------------------------------------------------- CIDEr-D
def cider_d(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    scorer: CiderD | None = None,
) -> float:
    """Mean CIDEr-D as pycocoevalcap's ``Cider``: document frequencies from the references of
    the images scored, one document per image (so a repeated image counts twice, as there)."""
    scorer = scorer or CiderD(references)
    return float(np.mean(scorer.scores(hypotheses, references)))


# ------------------------------------------------------------------------- reference sets
@dataclass(frozen=True)
class _ReferenceSet:
    """What the scorers prepare from one set of references, kept for the next call with the
    same references (every validation epoch)."""

    rouge: _RougeReferences
    cider: CiderD


def _reference_set(references: Sequence[Sequence[str]]) -> _ReferenceSet:
    key = tuple(tuple(refs) for refs in references)
    found = _REFERENCE_SETS.get(key)
    if found is None:
        found = _ReferenceSet(_RougeReferences.build(references), CiderD(references))
        if len(_REFERENCE_SETS) >= _MAX_CACHED_REFERENCE_SETS:
            del _REFERENCE_SETS[next(iter(_REFERENCE_SETS))]  # the oldest
        _REFERENCE_SETS[key] = found
    return found
