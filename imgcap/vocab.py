"""Caption normalisation and the word vocabulary.

The special tokens and their ids live in :mod:`imgcap.tokens` (the models import them from
there, not from here); an encoded caption reads ``[<start>, w1, ..., wn, <end>]``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from imgcap.atomic import write_json
from imgcap.tokens import (  # noqa: F401 - re-exported for the data code
    END,
    END_ID,
    PAD,
    PAD_ID,
    SPECIAL_TOKENS,
    START,
    START_ID,
    UNK,
    UNK_ID,
)

_NON_WORD = re.compile(r"[^a-z0-9\s]+")


def normalize_caption(text: str) -> list[str]:
    """Lower-case, drop punctuation, split on white space: ``"A dog's ball."`` -> ``[a, dogs, ball]``."""
    return _NON_WORD.sub("", text.lower()).split()


class Vocabulary:
    """Bidirectional word <-> id map with the four special tokens first."""

    def __init__(self, words: Sequence[str]):
        self.itos: list[str] = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    pad_id, start_id, end_id, unk_id = PAD_ID, START_ID, END_ID, UNK_ID

    @classmethod
    def build(cls, captions: Iterable[str], min_word_freq: int = 5) -> Vocabulary:
        """Keep words seen at least ``min_word_freq`` times; order by count, then alphabetically
        (deterministic whatever order the captions arrive in)."""
        counts = Counter(w for c in captions for w in normalize_caption(c))
        kept = sorted(
            (w for w, n in counts.items() if n >= min_word_freq), key=lambda w: (-counts[w], w)
        )
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def encode(self, caption: str) -> list[int]:
        """Caption string -> ``[START_ID, ids..., END_ID]``; unknown words become ``UNK_ID``."""
        return (
            [START_ID] + [self.stoi.get(w, UNK_ID) for w in normalize_caption(caption)] + [END_ID]
        )

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> words, stopping at the first ``<end>`` and dropping ``<start>``/``<pad>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"itos": self.itos}

    @classmethod
    def from_dict(cls, state: dict) -> Vocabulary:
        itos = list(state["itos"])
        if tuple(itos[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}, got {itos[:4]}")
        return cls(itos[4:])

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temp file + rename) so a crash never leaves a half-written file."""
        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        with open(path) as f:
            return cls.from_dict(json.load(f))


# A vocabulary below this many words, or more than this share of training words outside it,
# makes a captioner that mostly says <unk> (Flickr8k at min_word_freq=5: ~2,500 words, ~2%).
SMALL_VOCAB_WORDS = 100
LARGE_UNK_SHARE = 0.05


def vocabulary_warning(
    vocab: Vocabulary, captions: Iterable[str], min_word_freq: int
) -> str | None:
    """One line when ``vocab`` (built from ``captions`` with ``min_word_freq``) is tiny or maps
    a large share of the training words to ``<unk>``, saying what to change; None when it is
    fine, or when no word was dropped (then a lower threshold would change nothing)."""
    counts = Counter(w for c in captions for w in normalize_caption(c))
    total = sum(counts.values())
    kept = sum(1 for w in counts if w in vocab.stoi)
    unk = sum(n for w, n in counts.items() if w not in vocab.stoi)
    if total == 0 or kept == len(counts):
        return None
    share = unk / total
    if share <= LARGE_UNK_SHARE and kept >= SMALL_VOCAB_WORDS:
        return None
    effect = ", so predictions will be mostly <unk>" if share > 0.25 else ""
    return (
        f"small vocabulary: data.min_word_freq={min_word_freq} keeps {kept} of {len(counts)} "
        f"distinct training words and {share:.0%} of the training words become <unk>{effect}; "
        "on a small dataset lower it, e.g. data.min_word_freq=1"
    )
