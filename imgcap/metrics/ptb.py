"""PTB tokenisation as pycocoevalcap does it: Stanford PTBTokenizer (Java) when ``java`` is on
PATH, else :func:`python_ptb_tokenize`, a pure-Python imitation for caption text (one warning
says so). :func:`last_tokenizer` tells which of the two ran last, for ``metrics.json``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence

from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from imgcap.metrics.common import JVM_LOCALE, PYCOCOEVALCAP_DIR, warn_once

__all__ = [
    "TOKENIZER_JAVA",
    "TOKENIZER_PYTHON",
    "java_available",
    "last_tokenizer",
    "ptb_tokenize",
    "python_ptb_tokenize",
]

_CORENLP_JAR = PYCOCOEVALCAP_DIR / "tokenizer" / "stanford-corenlp-3.4.1.jar"
# The same program and flags as pycocoevalcap's PTBTokenizer class.
_PTB_CMD = [
    "java",
    *JVM_LOCALE,
    "-cp",
    str(_CORENLP_JAR),
    "edu.stanford.nlp.process.PTBTokenizer",
    "-preserveLines",
    "-lowerCase",
]
_PUNCTUATIONS = frozenset(PUNCTUATIONS)

_NO_JAVA_MESSAGE = (
    "METEOR is skipped and PTB tokenisation uses a Python imitation because Java >= 8 was not "
    "found on PATH (pycocoevalcap runs METEOR and the Stanford tokenizer in a JVM). Install a "
    "JRE, e.g. `apt install default-jre-headless`, `brew install openjdk` or `conda install -c "
    "conda-forge openjdk`, and make sure `java -version` works."
)


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (checked on every call, not cached)."""
    return shutil.which("java") is not None


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


# Tokens of each (chunk, is-last-chunk) seen, since captions repeat the same few thousand words:
# validation tokenises thousands of captions per epoch. Bounded: cleared when full.
_CHUNK_MEMO: dict[tuple[str, bool], list[str]] = {}
_CHUNK_MEMO_SIZE = 200_000


def _chunk_tokens(chunk: str, last: bool) -> list[str]:
    key = (chunk, last)
    tokens = _CHUNK_MEMO.get(key)
    if tokens is None:
        if len(_CHUNK_MEMO) >= _CHUNK_MEMO_SIZE:
            _CHUNK_MEMO.clear()
        tokens = _CHUNK_MEMO[key] = _split_chunk(chunk, last)
    return tokens


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
                tokens += _chunk_tokens(chunk, last=k == len(chunks) - 1)
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
            warn_once(
                "ptb-java-failed",
                f"The Java PTB tokenizer failed ({err}); using the Python imitation instead.",
            )
    else:
        warn_once("no-java", _NO_JAVA_MESSAGE)
    _last_tokenizer = TOKENIZER_PYTHON
    return python_ptb_tokenize(sentences)


def last_tokenizer() -> str:
    """The tokeniser of the latest :func:`ptb_tokenize` call in this process, or the one the next
    call would use when there was none: ``stanford-ptb-java`` or ``python-ptb-imitation``."""
    return _last_tokenizer or (TOKENIZER_JAVA if java_available() else TOKENIZER_PYTHON)
