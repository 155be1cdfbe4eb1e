"""The search space of a sweep: Hydra's sweep syntax -> Optuna distributions -> job overrides.

The syntax is Hydra's override grammar, in ``hydra.sweeper.params`` or on the command line:

* ``choice(256, 512)`` or ``256,512``: a categorical choice;
* ``range(1, 10)`` / ``range(0.1, 1.0, 0.1)``: evenly spaced numbers, ``stop`` excluded as in
  Python (an integer or a stepped float distribution);
* ``interval(1e-4, 1e-3)``: a continuous interval (integers when both ends are integers);
* ``tag(log, interval(1e-4, 1e-3))`` (or ``tag(log, range(...))``): sampled on a log scale;
* anything else: a fixed value, passed to every trial as it is.

Keys go through :func:`imgcap.config_aliases.canonical_key`, so the design card's flat keys
(``model.attention_dim``) name the same parameter as their real key and become ``++`` overrides
exactly as on the command line.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from imgcap.config_aliases import canonical_key, canonical_override
from imgcap.errors import ConfigError

# Keys of the command line that say where things live, not what is trained: they never change
# a study's identity (a sweep moved to another machine still continues its study).
_PLACE_KEYS = ("paths.", "data.root", "data.cache_dir", "ckpt_path", "hydra.")


@dataclass
class SearchSpace:
    """Distributions to sample (by canonical key) and fixed overrides given to every trial."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    # The user's spelling of each parameter (``model.attention_dim`` for an alias).
    spelling: dict[str, str] = field(default_factory=dict)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The job's task overrides for one trial: the fixed ones, then the sampled values."""
        sampled = [
            canonical_override(f"{self.spelling.get(k, k)}={format_value(v)}")
            for k, v in params.items()
        ]
        return [*self.fixed, *sampled]

    def describe(self) -> dict[str, str]:
        """Each parameter's distribution as text (for logs and the study's identity)."""
        return {k: repr(d) for k, d in sorted(self.distributions.items())}


def format_value(value: Any) -> str:
    """A Python value as Hydra override text: ``None`` -> ``null``, strings quoted when needed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w./-]*", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _number(value: Any) -> int | float:
    """Hydra parses numbers as int, float or Decimal (in ranges): plain Python numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return float(value)


def distribution_of(key: str, sweep: Any) -> BaseDistribution:
    """One Hydra sweep (ChoiceSweep, RangeSweep, IntervalSweep) -> an Optuna distribution."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    log = "log" in (sweep.tags or set())
    if isinstance(sweep, ChoiceSweep):
        choices = [_plain(v) for v in sweep.list]
        if not choices:
            raise ConfigError(f"{key}: choice() needs at least one value")
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        start, stop, step = _number(sweep.start), _number(sweep.stop), _number(sweep.step)
        if step <= 0 or stop <= start:
            raise ConfigError(f"{key}: range({start}, {stop}, {step}) is empty; use start < stop")
        if all(isinstance(v, int) for v in (start, stop, step)):
            high = start + ((stop - 1 - start) // step) * step  # the last value, stop excluded
            if log and step != 1:
                raise ConfigError(f"{key}: tag(log, range(...)) needs step 1")
            return IntDistribution(start, high, log=log, step=step)
        count = math.ceil(round((stop - start) / step, 9))
        high = round(start + (count - 1) * step, 12)  # 0.30000000000000004 -> 0.3
        if log:
            raise ConfigError(f"{key}: tag(log, ...) works on integer ranges and interval(...)")
        return FloatDistribution(float(start), float(high), step=float(step))
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if low is None or high is None or not low < high:
            raise ConfigError(f"{key}: interval({low}, {high}) needs low < high")
        if log and low <= 0:
            raise ConfigError(f"{key}: tag(log, interval({low}, {high})) needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ConfigError(f"{key}: unsupported sweep {sweep!r} (use choice, range or interval)")


def _plain(value: Any) -> Any:
    """Values Optuna can store in a categorical distribution (None, bool, int, float, str)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def parse_search_space(params: Mapping[str, Any] | None, arguments: Iterable[str]) -> SearchSpace:
    """The sweeper's ``params`` plus the command line's own sweeps (``key=choice(...)``,
    ``key=1,2``) -> a :class:`SearchSpace`. A key given in both takes the command line's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    space = SearchSpace()
    entries: list[str] = [
        f"{key}={value}" for key, value in (params or {}).items() if value is not None
    ]
    entries += list(arguments)
    by_key: dict[str, str] = {}
    for text in entries:
        key = text.partition("=")[0].lstrip("+~")
        by_key[canonical_key(key)] = text  # later wins: the command line over params
    for canonical, text in by_key.items():
        try:
            (override,) = parser.parse_overrides([canonical_override(text)])
        except Exception as err:  # noqa: BLE001 - Hydra's parse error, as one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"sweep parameter {text!r} cannot be parsed ({first}); see Hydra's override grammar"
            ) from None
        if override.is_sweep_override():
            if override.is_delete():
                raise ConfigError(f"{text}: a deletion (~) cannot be swept")
            user_key = text.partition("=")[0].lstrip("+~")
            space.distributions[canonical] = distribution_of(user_key, override.value())
            space.spelling[canonical] = user_key
        else:
            space.fixed.append(canonical_override(text))
    return space


def identity_overrides(arguments: Iterable[str]) -> list[str]:
    """The command-line overrides that define what a study optimises (places left out)."""
    kept = []
    for arg in arguments:
        key = arg.partition("=")[0].lstrip("+~")
        if not key.startswith(_PLACE_KEYS):
            kept.append(canonical_override(arg))
    return sorted(kept)


def default_study_name(
    experiment: str | None, space: SearchSpace, arguments: Iterable[str], objective: str
) -> str:
    """``<experiment>-<8 hex>``: the same command gives the same name (so rerunning it continues
    the study), a different search space, fixed override or objective another one."""
    payload = json.dumps(
        {
            "space": space.describe(),
            "fixed": identity_overrides(arguments),
            "objective": objective,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
    stem = re.sub(r"[^\w.-]", "_", experiment) if experiment and experiment != "None" else "train"
    return f"{stem}-{digest}"
