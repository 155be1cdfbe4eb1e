"""Pieces the metric modules share: the degradation warning and where pycocoevalcap's jars are."""

from __future__ import annotations

import warnings
from pathlib import Path

import pycocoevalcap.tokenizer.ptbtokenizer as _ptb_module

__all__ = ["JVM_LOCALE", "PYCOCOEVALCAP_DIR", "MetricsWarning", "warn_once"]

PYCOCOEVALCAP_DIR = (
    Path(_ptb_module.__file__).resolve().parent.parent
)  # namespace package: no __file__
# pycocoevalcap runs the Stanford tokenizer and METEOR in a JVM. These -D options pin the JVM
# locale and charset: METEOR prints its statistics with the default locale, and a decimal comma
# (de_DE, fr_FR, ...) makes the returned numbers unparsable.
JVM_LOCALE = ["-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8"]


class MetricsWarning(UserWarning):
    """A metric had to degrade (METEOR skipped, Python tokeniser used)."""


# Keys of the causes warned about in this process (tests reset it).
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    # One warning per cause and process: validation runs every epoch and must not repeat it.
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, MetricsWarning, stacklevel=3)
