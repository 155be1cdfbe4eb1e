"""The vocabulary of a dataset's training captions, cached in ``data.cache_dir`` under a name
that changes whenever what it is built from changes."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

from imgcap.data.annotations import Annotations
from imgcap.data.cache_location import legacy_cache_notice
from imgcap.vocab import Vocabulary, vocabulary_warning

log = logging.getLogger(__name__)


def vocab_path(ann: Annotations, root: Path, cache_dir: Path, min_word_freq: int) -> Path:
    """``<cache_dir>/vocab-<hash>.json``; the hash covers the training captions,
    min_word_freq and the dataset (its resolved caption file: one cache folder serves all)."""
    caption_file = ann.caption_file.resolve() if ann.caption_file else root.resolve()
    payload = json.dumps(
        {
            "train": [[n, ann.captions[n]] for n in ann.splits["train"]],
            "min_word_freq": min_word_freq,
            "dataset": str(caption_file),
        }
    )
    return cache_dir / f"vocab-{hashlib.sha256(payload.encode()).hexdigest()[:16]}.json"


def load_or_build_vocab(
    ann: Annotations, root: Path, cache_dir: Path, min_word_freq: int
) -> Vocabulary:
    """Read the cached vocabulary, or build it from the training captions and cache it (an
    unreadable cache file is rebuilt and replaced; an unwritable folder is a warning)."""
    notice = legacy_cache_notice(root, cache_dir)
    if notice:
        log.warning(notice)
    path = vocab_path(ann, root, cache_dir, min_word_freq)
    train_captions = [c for n in ann.splits["train"] for c in ann.captions[n]]
    vocab = None
    if path.is_file():
        try:
            vocab = Vocabulary.load(path)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: rebuild and replace it
    if vocab is None:
        vocab = Vocabulary.build(train_captions, min_word_freq)
        try:
            vocab.save(path)
        except OSError as e:
            warnings.warn(
                f"cannot write the vocabulary to {path} ({e}); set data.cache_dir to a writable folder",
                stacklevel=3,
            )
    # Built now or read from the cache, a vocabulary that maps most words to <unk> trains a
    # model that says nothing else: say so in every run, not only the first.
    warning = vocabulary_warning(vocab, train_captions, min_word_freq)
    if warning:
        log.warning(warning)
    return vocab
