"""Caption metrics: one entry point for validation, ``evaluate.py`` and tests.

The reference is pycocoevalcap (what papers report): PTB tokenisation (Stanford PTBTokenizer,
Java), BLEU-1..4, METEOR 1.5 (Java), ROUGE-L and CIDEr-D. Scores are on pycocoevalcap's native
0..1 scale; CIDEr-D can exceed 1.

Without Java (``shutil.which("java") is None``) or when the METEOR JVM fails, METEOR is left out
of the result (missing, not 0) and PTB tokenisation falls back to :func:`python_ptb_tokenize`,
a pure-Python imitation of PTBTokenizer for caption text; a single warning says so.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import pycocoevalcap.tokenizer.ptbtokenizer as _ptb_module
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS
from torchmetrics import Metric

__all__ = [
    "METRIC_KEYS",
    "CaptionMetric",
    "MetricsWarning",
    "compute_caption_metrics",
    "java_available",
    "ptb_tokenize",
    "python_ptb_tokenize",
    "scoring_info",
]

METRIC_KEYS: tuple[str, ...] = (
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr",
)

_PKG_DIR = Path(_ptb_module.__file__).resolve().parent.parent  # namespace package: no __file__
_CORENLP_JAR = _PKG_DIR / "tokenizer" / "stanford-corenlp-3.4.1.jar"
_METEOR_JAR = _PKG_DIR / "meteor" / "meteor-1.5.jar"
# The same program and flags as pycocoevalcap's PTBTokenizer and Meteor classes. The extra -D
# options pin the JVM locale and charset: METEOR prints its statistics with the default locale,
# and a decimal comma (de_DE, fr_FR, ...) makes the returned numbers unparsable.
_JVM_LOCALE = ["-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8"]
_PTB_CMD = [
    "java",
    *_JVM_LOCALE,
    "-cp",
    str(_CORENLP_JAR),
    "edu.stanford.nlp.process.PTBTokenizer",
    "-preserveLines",
    "-lowerCase",
]
_METEOR_CMD = [
    "java",
    *_JVM_LOCALE,
    "-Xmx2G",
    "-jar",
    str(_METEOR_JAR),
    "-",
    "-",
    "-stdio",
    "-l",
    "en",
    "-norm",
]
_METEOR_TIMEOUT_S = 900.0
_PUNCTUATIONS = frozenset(PUNCTUATIONS)


class MetricsWarning(UserWarning):
    """A metric had to degrade (METEOR skipped, Python tokeniser used)."""


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    # One warning per cause and process: validation runs every epoch and must not repeat it.
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, MetricsWarning, stacklevel=3)


_NO_JAVA_MESSAGE = (
    "METEOR is skipped and PTB tokenisation uses a Python imitation because Java >= 8 was not "
    "found on PATH (pycocoevalcap runs METEOR and the Stanford tokenizer in a JVM). Install a "
    "JRE, e.g. `apt install default-jre-headless`, `brew install openjdk` or `conda install -c "
    "conda-forge openjdk`, and make sure `java -version` works."
)


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (checked on every call, not cached)."""
    return shutil.which("java") is not None


# --------------------------------------------------------------------------------------------
# PTB tokenisation
# --------------------------------------------------------------------------------------------


def _clean_line(text: str) -> str:
    # One caption per line for -preserveLines; any line break inside a caption would shift every
    # later caption onto the wrong image.
    return " ".join(text.split())


def _drop_punctuation(line: str) -> str:
    return " ".join(w for w in line.rstrip().split(" ") if w not in _PUNCTUATIONS)


def _java_ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Stanford PTBTokenizer, fed through stdin, stderr captured (it prints a progress line)."""
    lines = [_clean_line(s) for s in sentences]
    todo = [i for i, line in enumerate(lines) if line]  # blank input tokenises to ""
    out = [""] * len(lines)
    if not todo:
        return out
    proc = subprocess.run(
        _PTB_CMD,
        input="\n".join(lines[i] for i in todo) + "\n",
        capture_output=True,
        encoding="utf-8",
        check=False,
    )
    tokenized = proc.stdout.split("\n")
    if proc.returncode != 0 or len(tokenized) < len(todo):
        raise RuntimeError(
            f"PTBTokenizer failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    for i, line in zip(todo, tokenized, strict=False):
        out[i] = _drop_punctuation(line)
    return out


# Pure-Python PTB imitation. Stanford's lexer works on the original case and lower-cases the
# tokens afterwards, so bracket tokens come out as "-lrb-" and are NOT in pycocoevalcap's
# PUNCTUATIONS (which lists "-LRB-"): they stay in the token stream, as with Java.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPECIAL_SPLITS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "lemme": ("lem", "me"),
    "gimme": ("gim", "me"),
    "'tis": ("'t", "is"),
    "'twas": ("'t", "was"),
}
# Words whose trailing period is part of the token unless they end the line.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st mt ft jr sr vs etc no inc co corp ltd prof gen sen rep gov lt col sgt capt "
    "ave blvd rd jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_ACRONYM_RE = re.compile(r"^[A-Za-z](?:\.[A-Za-z])+\.$")  # u.s. p.m. e.g.
_CONTRACTION_RE = re.compile(r"^(.*[^'])(n't|'s|'re|'ve|'ll|'d|'m)$", re.IGNORECASE)
_UNICODE_MAP = str.maketrans(
    {
        "\u2014": " -- ",
        "\u2013": " -- ",
        "\u2026": " ... ",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u00a0": " ",
    }
)
_LEAD = ('"', "`", "(", "[", "{", "$", "#")
_TRAIL = ('"', ")", "]", "}", ",", ";", ":", "?", "!", "%")


def _split_chunk(chunk: str, last: bool) -> list[str]:
    """Tokens of one whitespace-free chunk (original case)."""
    head: list[str] = []
    tail: list[str] = []
    while chunk:
        if chunk.startswith("--"):
            head.append("--")
            chunk = chunk[2:]
        elif chunk[0] in _LEAD or (chunk[0] == "-" and len(chunk) > 1 and chunk[1].isalpha()):
            head.append(chunk[0])
            chunk = chunk[1:]
        elif (
            chunk[0] == "'"
            and len(chunk) > 1
            and chunk[1].isalpha()
            and chunk.endswith("'")
            and chunk.lower() != "'n'"
        ):
            head.append("`")
            chunk = chunk[1:]
        else:
            break
    while chunk:
        run = re.search(r"[?!]{2,}$", chunk)
        if run:  # "?!" and "!!" are one token each, and not in PUNCTUATIONS
            tail.append(run.group())
            chunk = chunk[: run.start()]
        elif chunk.endswith("..."):
            tail.append("...")
            chunk = chunk[:-3]
        elif chunk.endswith("--"):
            tail.append("--")
            chunk = chunk[:-2]
        elif chunk[-1] in _TRAIL or (
            chunk[-1] in "-'" and len(chunk) > 1 and chunk.lower() != "'n'"
        ):
            tail.append(chunk[-1])
            chunk = chunk[:-1]
        elif chunk.endswith(".") and len(chunk) > 1:
            stem = chunk[:-1]
            is_last = last and not tail
            if _ACRONYM_RE.match(chunk) or (stem.lower() in _ABBREVIATIONS and not is_last):
                break
            tail.append(".")
            chunk = stem
        else:
            break
    middle: list[str] = []
    if chunk:
        # Inner "--" and commas between words split; commas inside numbers (1,000) do not.
        for piece in re.split(r"(--|(?<=[^\W\d]),(?=[^\W\d])|\.{3}|[()\[\]{}])", chunk):
            if not piece:
                continue
            low = piece.lower()
            if low in _SPECIAL_SPLITS:
                a, b = _SPECIAL_SPLITS[low]
                middle += [piece[: len(a)], piece[len(a) :]]
                continue
            m = _CONTRACTION_RE.match(piece)
            if m:
                middle += [m.group(1), m.group(2)]
            else:
                middle.append(piece)
    return head + middle + [t for t in reversed(tail)]


def python_ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Pure-Python stand-in for pycocoevalcap's PTBTokenizer + punctuation removal.

    Lower-cases, splits punctuation, brackets, quotes and clitics (``n't 's 're 've 'll 'd 'm``)
    the way Stanford PTBTokenizer 3.4.1 does on caption text, then drops the same punctuation
    tokens as pycocoevalcap. Known differences from Java are confined to rare text: single
    capital letters followed by a period ("area b."), abbreviations outside a short built-in
    list, and exotic Unicode symbols.
    """
    out = []
    for sentence in sentences:
        chunks = _clean_line(sentence.translate(_UNICODE_MAP)).split(" ")
        tokens: list[str] = []
        for k, chunk in enumerate(chunks):
            if chunk:
                tokens += _split_chunk(chunk, last=k == len(chunks) - 1)
        words = [_BRACKETS.get(t, t).lower() for t in tokens]
        out.append(" ".join(w for w in words if w not in _PUNCTUATIONS and w not in ('"', "`")))
    return out


TOKENIZER_JAVA = "stanford-ptb-java"
TOKENIZER_PYTHON = "python-ptb-imitation"
# The tokeniser of the latest ptb_tokenize call in this process (metrics.json records it).
_last_tokenizer: str | None = None


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenise like pycocoevalcap's PTBTokenizer (Java when present, else the Python stand-in).

    Returns one space-joined, lower-cased string per input with punctuation tokens removed.
    """
    global _last_tokenizer
    if java_available():
        try:
            tokens = _java_ptb_tokenize(sentences)
            _last_tokenizer = TOKENIZER_JAVA
            return tokens
        except (OSError, RuntimeError) as err:
            _warn_once(
                "ptb-java-failed",
                f"The Java PTB tokenizer failed ({err}); using the Python imitation instead.",
            )
    else:
        _warn_once("no-java", _NO_JAVA_MESSAGE)
    _last_tokenizer = TOKENIZER_PYTHON
    return python_ptb_tokenize(sentences)


def scoring_info(scores: dict[str, float] | None = None) -> dict[str, Any]:
    """How the latest scores were made, for metrics.json: the tokeniser that ran
    (``stanford-ptb-java`` or ``python-ptb-imitation``), whether METEOR ran (it is in
    ``scores``), and that SPICE is not computed."""
    return {
        "tokenizer": _last_tokenizer or (TOKENIZER_JAVA if java_available() else TOKENIZER_PYTHON),
        "meteor": bool(scores) and "METEOR" in scores,
        "spice": False,
        "scorer": "pycocoevalcap",
    }


# --------------------------------------------------------------------------------------------
# METEOR
# --------------------------------------------------------------------------------------------


def _meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """Corpus METEOR 1.5 with the same stdin protocol as pycocoevalcap's ``Meteor`` class.

    Unlike that class, the JVM is owned by this call: it is killed in ``finally`` (no reliance
    on ``__del__``, which dead-locks if scoring raised while holding its lock), stderr goes to a
    temporary file (a full pipe would block the JVM), and a watchdog kills a hung JVM so that
    ``readline`` sees EOF and the failure surfaces as an exception.
    """
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(
            _METEOR_CMD,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err_file,
            cwd=_METEOR_JAR.parent,
        )
        watchdog = threading.Timer(_METEOR_TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            assert proc.stdin is not None and proc.stdout is not None

            def ask(line: str) -> str:
                proc.stdin.write((line + "\n").encode("utf-8"))
                proc.stdin.flush()
                return proc.stdout.readline().decode("utf-8").strip()

            try:
                stats = []
                for i in gts:
                    hyp = res[i][0].replace("|||", "").replace("  ", " ")
                    stats.append(ask(" ||| ".join(("SCORE", " ||| ".join(gts[i]), hyp))))
                proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
                proc.stdin.flush()
                for _ in gts:  # per-image scores, not needed
                    float(proc.stdout.readline().strip())
                return float(proc.stdout.readline().strip())
            except (ValueError, OSError) as exc:
                err_file.seek(0)
                tail = err_file.read().decode("utf-8", "replace").strip()[-500:]
                raise RuntimeError(f"METEOR subprocess failed: {tail or exc}") from exc
        finally:
            watchdog.cancel()
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
            proc.kill()
            proc.wait()
            with contextlib.suppress(OSError):
                proc.stdout.close()  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def compute_caption_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    meteor: bool = True,
) -> dict[str, float]:
    """Score captions exactly as pycocoevalcap does.

    Args:
        hypotheses: one generated caption per image (raw text; "" allowed).
        references: for each image, one or more human captions (raw text).
        meteor: compute METEOR (starts a JVM, ~2-5 s). Ignored without Java.

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
    if not hypotheses:
        raise ValueError("no captions to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image {i}: references must be a non-empty list of strings")

    use_java = java_available()
    # Tokenise every caption in one JVM launch (~0.5 s each); -preserveLines keeps them apart.
    flat_refs = [r for refs in references for r in refs]
    tokens = ptb_tokenize([*hypotheses, *flat_refs])
    res = {i: [tokens[i]] for i in range(len(hypotheses))}
    gts: dict[int, list[str]] = {}
    pos = len(hypotheses)
    for i, refs in enumerate(references):
        gts[i] = tokens[pos : pos + len(refs)]
        pos += len(refs)

    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints debug lines
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
        if meteor and use_java:
            try:
                scores["METEOR"] = _meteor_score(gts, res)
            except (OSError, RuntimeError) as err:
                _warn_once("meteor-failed", f"METEOR is skipped: {err}")
        scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: scores[k] for k in METRIC_KEYS if k in scores}


# --------------------------------------------------------------------------------------------
# torchmetrics wrapper
# --------------------------------------------------------------------------------------------


class CaptionMetric(Metric):
    """Accumulates decoded captions over steps and scores them with
    :func:`compute_caption_metrics` at ``compute()``.

    States are Python lists of strings (``hypotheses``, ``references``, ``image_ids``).
    torchmetrics' default sync all-gathers tensors only, so :meth:`_sync_dist` is overridden
    to use ``torch.distributed.all_gather_object`` (pickles each rank's lists; one collective
    per compute, cheap next to METEOR). Encoding text into padded byte tensors would also work
    but needs a length exchange and adds nothing here. ``image_ids`` (optional, one hashable
    per caption) lets ``compute`` drop the duplicates a ``DistributedSampler`` adds to pad the
    last batch; the first occurrence is kept.

    Under DDP, ``compute`` scores on the first rank only and broadcasts the dict, so every
    rank returns the same values (log them with ``sync_dist=False``) and one JVM runs.
    Typical use: ``update`` in ``validation_step``; in ``on_validation_epoch_end``,
    ``log_dict({f"val/{k}": v for k, v in metric.compute().items()})`` then ``reset()``.
    ``compute`` raises ``ValueError`` when nothing was accumulated.

    ``forward`` only updates (it does not score the batch): per-batch scoring would start a JVM
    every step and CIDEr's idf is only meaningful over the whole set.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    _STRING_STATES = ("hypotheses", "references", "image_ids")

    def __init__(self, meteor: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meteor = meteor
        for name in self._STRING_STATES:
            self.add_state(name, default=[], dist_reduce_fx=None)

    def __hash__(self) -> int:
        # torchmetrics hashes the state values, and the references state holds lists: Lightning's
        # teardown after an error (or Ctrl-C) would then raise TypeError and hide the original
        # error. Identity is what a hash of a stateful object should mean anyway.
        return hash((self.__class__.__name__, id(self)))

    def update(
        self,
        hypotheses: Sequence[str],
        references: Sequence[Sequence[str]],
        image_ids: Sequence[Hashable] | torch.Tensor | None = None,
    ) -> None:
        """Add one batch: ``hypotheses[i]`` is scored against ``references[i]``."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        if isinstance(image_ids, torch.Tensor):
            image_ids = image_ids.tolist()
        if image_ids is not None and len(image_ids) != len(hypotheses):
            raise ValueError(f"{len(image_ids)} image ids for {len(hypotheses)} hypotheses")
        if (image_ids is None) != (len(self.image_ids) == 0) and len(self.hypotheses) > 0:
            raise ValueError("pass image_ids in every update or in none")
        self.hypotheses.extend(str(h) for h in hypotheses)
        self.references.extend([str(r) for r in refs] for refs in references)
        if image_ids is not None:
            self.image_ids.extend(image_ids)

    def compute(self) -> dict[str, float]:
        hyps, refs = list(self.hypotheses), list(self.references)
        if self.image_ids:
            seen: set[Hashable] = set()
            keep = []
            for i, image_id in enumerate(self.image_ids):
                if image_id not in seen:
                    seen.add(image_id)
                    keep.append(i)
            hyps, refs = [hyps[i] for i in keep], [refs[i] for i in keep]
        if not (self._is_synced and torch.distributed.get_world_size(self.process_group) > 1):
            return compute_caption_metrics(hyps, refs, meteor=self.meteor)
        # Synced states are identical on every rank: score once on the group's first rank (one
        # JVM instead of one per GPU) and broadcast. Errors travel too, so no rank is left
        # waiting in the collective.
        group = self.process_group
        box: list[Any] = [None]
        if torch.distributed.get_rank(group) == 0:
            try:
                box[0] = compute_caption_metrics(hyps, refs, meteor=self.meteor)
            except Exception as err:  # re-raised below, on every rank
                box[0] = err
        src = torch.distributed.get_global_rank(group, 0) if group is not None else 0
        torch.distributed.broadcast_object_list(box, src=src, group=group)
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def forward(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.update(*args, **kwargs)

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any = None) -> None:
        group = process_group or self.process_group
        local = {name: list(getattr(self, name)) for name in self._STRING_STATES}
        gathered: list[Any] = [None] * torch.distributed.get_world_size(group)
        torch.distributed.all_gather_object(gathered, local, group=group)
        for name in self._STRING_STATES:
            setattr(self, name, [x for rank_state in gathered for x in rank_state[name]])

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> Metric:
        # .to(device) must not touch the string lists.
        return super()._apply(fn, exclude_state=(*exclude_state, *self._STRING_STATES))
