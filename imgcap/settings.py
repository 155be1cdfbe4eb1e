"""Plug-in settings: one frozen dataclass per decoder or objective, the single home of its
defaults and of the checks on its values.

A settings class names the config node it lives under (``config_key``, e.g. ``model.decoder``)
and declares each setting as a field whose metadata says what a good value is
(:func:`integer`, :func:`number`, :func:`flag`, :func:`choice`). Building one checks every
value (``__post_init__``) and raises a one-line :class:`~imgcap.errors.ConfigError` naming the
key, e.g. ``model.decoder.attention_dim=0 must be an integer >= 1, e.g.
model.decoder.attention_dim=1``; a plug-in adds checks across fields in :meth:`Settings.check`.

The same value checks serve the rest of the config (:mod:`imgcap.run.checks`), so a message
reads the same wherever the value comes from. Pure Python: every layer may import it.

Example::

    @dataclass(frozen=True)
    class MySettings(Settings):
        config_key: ClassVar[str] = "model.decoder"
        hidden: int = integer(256, minimum=1)
        dropout: float = number(0.1, low=0.0, high=1.0, high_open=True)

    MySettings(hidden=0)   # ConfigError: model.decoder.hidden=0 must be an integer >= 1, ...
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from imgcap.errors import ConfigError

# ------------------------------------------------------------------ value checks, by key


def check_int(key: str, value: Any, minimum: int, optional: bool = False) -> None:
    """An integer >= ``minimum`` (``None`` too when ``optional``); bools are not integers."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{key}={value!r} must be an integer >= {minimum}, e.g. {key}={max(minimum, 1)}"
            + (" (or null)" if optional else "")
        )


def check_number(key: str, value: Any, low: float, high: float, high_open: bool = False) -> None:
    """A finite number in ``[low, high]`` (``[low, high)`` when ``high_open``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r} must be a number in [{low}, {high}{bracket}")


def check_flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")


def check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {tuple(choices)}, got {value!r}")


def check_beam_size(value: Any, key: str = "beam_size") -> int:
    """The one check of a beam width, wherever it is given (the config's ``model.beam_size``,
    ``evaluate.py``/``caption.py beam_size=``, the Python API, the decoding functions):
    a positive int (1 = greedy), returned as an int; anything else is a ConfigError naming
    ``key``."""
    try:
        size = operator.index(value) if not isinstance(value, bool) else 0
    except TypeError:
        size = 0
    if size < 1:
        raise ConfigError(f"{key}={value!r} must be a positive int (1 = greedy), e.g. {key}=3")
    return size


# ------------------------------------------------------------------ fields with their checks

_CHECK = "imgcap_check"  # field metadata key: (key, value) -> None


def _field(default: Any, check: Callable[[str, Any], None]) -> Any:
    return dataclasses.field(default=default, metadata={_CHECK: check})


def integer(default: int | None, minimum: int = 1, optional: bool = False) -> Any:
    """A field holding an integer >= ``minimum`` (or None when ``optional``)."""
    return _field(default, lambda key, v: check_int(key, v, minimum, optional))


def number(
    default: float, low: float = 0.0, high: float = math.inf, high_open: bool = False
) -> Any:
    """A field holding a finite number in ``[low, high]`` (``high)`` when ``high_open``)."""
    return _field(default, lambda key, v: check_number(key, v, low, high, high_open))


def flag(default: bool) -> Any:
    """A field holding true or false."""
    return _field(default, check_flag)


def choice(default: str, choices: Sequence[str]) -> Any:
    """A field holding one of ``choices``."""
    return _field(default, lambda key, v: check_choice(key, v, choices))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of the plug-in settings dataclasses (see the module docstring)."""

    #: the config node the settings live under, for messages (``model.decoder``)
    config_key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get(_CHECK)
            if check is not None:
                check(f"{self.config_key}.{f.name}", getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Checks across fields (e.g. a width that must divide by the number of heads);
        each field's own range is already checked when this runs."""

    @classmethod
    def names(cls) -> list[str]:
        """The settings, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default, as plain values (the config group's schema)."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_args(cls, *args: Any, **kwargs: Any) -> Settings:
        """The settings from a plug-in constructor's arguments: one instance of ``cls`` as is,
        or the fields positionally in declaration order and/or by name."""
        if len(args) == 1 and not kwargs and isinstance(args[0], cls):
            return args[0]
        try:
            return cls(*args, **kwargs)
        except TypeError as err:  # an unknown keyword or too many positional values
            raise TypeError(f"{cls.__name__}: {err}; its settings are {cls.names()}") from None

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (what a checkpoint stores)."""
        return dataclasses.asdict(self)


def settings_of(cls: type) -> type[Settings] | None:
    """The settings dataclass a plug-in class declares (its ``settings_class``), or None."""
    found = getattr(cls, "settings_class", None)
    return found if isinstance(found, type) and issubclass(found, Settings) else None
