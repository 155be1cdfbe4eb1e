"""Caption metrics: one entry point for validation, ``evaluate.py`` and tests.

The reference is pycocoevalcap (what papers report): PTB tokenisation (Stanford PTBTokenizer,
Java), BLEU-1..4, METEOR 1.5 (Java), ROUGE-L and CIDEr-D. Scores are on pycocoevalcap's native
0..1 scale; CIDEr-D can exceed 1.

Without Java (``shutil.which("java") is None``) or when the METEOR JVM fails, METEOR is left out
of the result (missing, not 0) and PTB tokenisation falls back to :func:`python_ptb_tokenize`,
a pure-Python imitation of PTBTokenizer for caption text; a single warning says so.

Modules: ``tokenize`` (PTB tokenisation), ``meteor`` (the METEOR process), ``scorers``
(:func:`compute_caption_metrics`, :func:`scoring_info`), ``torchmetric`` (:class:`CaptionMetric`),
``common`` (:class:`MetricsWarning`) and ``cider_d`` (:class:`CiderD`, per-caption CIDEr-D in
process, the self-critical training reward).
"""

from __future__ import annotations

from imgcap.metrics.cider_d import CiderD
from imgcap.metrics.common import MetricsWarning
from imgcap.metrics.ptb import (
    TOKENIZER_JAVA,
    TOKENIZER_PYTHON,
    java_available,
    ptb_tokenize,
    python_ptb_tokenize,
)
from imgcap.metrics.scorers import METRIC_KEYS, compute_caption_metrics, scoring_info
from imgcap.metrics.torchmetric import CaptionMetric

__all__ = [
    "METRIC_KEYS",
    "TOKENIZER_JAVA",
    "TOKENIZER_PYTHON",
    "CaptionMetric",
    "CiderD",
    "MetricsWarning",
    "compute_caption_metrics",
    "java_available",
    "ptb_tokenize",
    "python_ptb_tokenize",
    "scoring_info",
]
