"""The metrics entry point: BLEU, METEOR, ROUGE-L and CIDEr-D on PTB tokens, scored by
pycocoevalcap (``backend="pycocoevalcap"``, the reference) or by the in-process scorers of
:mod:`imgcap.metrics.fast` that give the same numbers (``backend="fast"``, per-epoch validation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from imgcap.metrics.common import warn_once
from imgcap.metrics.fast import fast_caption_scores, tokenize_for_fast_scoring
from imgcap.metrics.meteor import meteor_score
from imgcap.metrics.ptb import java_available, last_tokenizer, ptb_tokenize

__all__ = ["BACKENDS", "METRIC_KEYS", "compute_caption_metrics", "scoring_info"]

METRIC_KEYS: tuple[str, ...] = (
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr",
)
# pycocoevalcap: its classes, the Java tokenizer launched per call (test scores, evaluate.py).
# fast: in-process scorers equal to it on the same tokens, references tokenised once per process.
BACKENDS: tuple[str, ...] = ("pycocoevalcap", "fast")
# (back end, tokenizer) of the latest scores of this process (metrics.json records them).
_last_scoring: tuple[str, str] | None = None


def compute_caption_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    meteor: bool = True,
    backend: str = "pycocoevalcap",
) -> dict[str, float]:
    """Score captions exactly as pycocoevalcap does.

    Args:
        hypotheses: one generated caption per image (raw text; "" allowed).
        references: for each image, one or more human captions (raw text).
        meteor: compute METEOR (starts a JVM, ~2-5 s). Ignored without Java.
        backend: ``pycocoevalcap`` (its classes; the Java tokenizer launched for this call) or
            ``fast`` (:mod:`imgcap.metrics.fast`: the same BLEU, ROUGE-L and CIDEr-D to float
            rounding, references tokenised once per process, hypotheses by the Python
            tokenizer). METEOR is pycocoevalcap's jar in both.

    Returns:
        ``{"BLEU-1", ..., "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` as floats on pycocoevalcap's
        0..1 scale. BLEU is corpus-level (``Bleu(4)``, "closest" reference length); CIDEr is
        **CIDEr-D** as implemented by pycocoevalcap's ``Cider`` class (n = 1..4, sigma = 6
        length penalty, hypothesis counts clipped to the reference, x10, idf from the
        references of the images scored together). "METEOR" is absent when Java is missing,
        when ``meteor=False``, or when the METEOR JVM failed (one warning per cause).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if not hypotheses:
        raise ValueError("no captions to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image {i}: references must be a non-empty list of strings")

    global _last_scoring
    if backend == "fast":
        hyp_tokens, ref_tokens, tokenizer = tokenize_for_fast_scoring(hypotheses, references)
        _last_scoring = (backend, tokenizer)
        scores = fast_caption_scores(hyp_tokens, ref_tokens)
        if meteor and java_available():
            gts = dict(enumerate(ref_tokens))
            res = {i: [h] for i, h in enumerate(hyp_tokens)}
            _add_meteor(scores, gts, res)
        return {k: scores[k] for k in METRIC_KEYS if k in scores}

    use_java = java_available()
    # Tokenise every caption in one JVM launch (~0.5 s each); -preserveLines keeps them apart.
    flat_refs = [r for refs in references for r in refs]
    tokens = ptb_tokenize([*hypotheses, *flat_refs])
    _last_scoring = (backend, last_tokenizer())
    res = {i: [tokens[i]] for i in range(len(hypotheses))}
    gts: dict[int, list[str]] = {}
    pos = len(hypotheses)
    for i, refs in enumerate(references):
        gts[i] = tokens[pos : pos + len(refs)]
        pos += len(refs)

    scores: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    if meteor and use_java:
        _add_meteor(scores, gts, res)
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: scores[k] for k in METRIC_KEYS if k in scores}


def _add_meteor(
    scores: dict[str, float], gts: dict[int, list[str]], res: dict[int, list[str]]
) -> None:
    try:
        scores["METEOR"] = meteor_score(gts, res)
    except (OSError, RuntimeError) as err:
        warn_once("meteor-failed", f"METEOR is skipped: {err}")


def scoring_info(scores: dict[str, float] | None = None) -> dict[str, Any]:
    """How the latest scores were made, for metrics.json: the tokeniser that ran
    (``stanford-ptb-java`` or ``python-ptb-imitation``), whether METEOR ran (it is in
    ``scores``), that SPICE is not computed, and the back end of the latest
    :func:`compute_caption_metrics` call (``pycocoevalcap`` or ``fast``). With ``fast`` the
    tokenizer is the references'; hypotheses went through the Python one."""
    backend, tokenizer = _last_scoring or ("pycocoevalcap", last_tokenizer())
    return {
        "tokenizer": tokenizer,
        "meteor": bool(scores) and "METEOR" in scores,
        "spice": False,
        "scorer": backend,
    }
