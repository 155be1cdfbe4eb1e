"""``hydra.sweeper.pruner=median|successive_halving|hyperband|none`` -> an Optuna pruner.

Settings (``hydra.sweeper.pruner_settings``) are the pruner's own keyword arguments, e.g.
``+hydra.sweeper.pruner_settings.n_warmup_steps=2`` for the median pruner. Steps are epochs:
each trial reports after every validation, at the epoch it ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgcap.errors import ConfigError

PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
    "wilcoxon": "WilcoxonPruner",
    "none": "NopPruner",
}


def pruner_spec(pruner: Any, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The pruner as plain data (stored in the study, so every job builds the same one)."""
    name = "none" if pruner in (None, False, "null", "None") else str(pruner)
    if name not in PRUNERS:
        raise ConfigError(f"hydra.sweeper.pruner={name} is not one of {', '.join(PRUNERS)}")
    return {"name": name, "settings": dict(settings or {})}


def build_pruner(name: str | None, settings: Mapping[str, Any] | None = None) -> Any:
    """An Optuna pruner by short name, with its keyword arguments."""
    import optuna

    spec = pruner_spec(name, settings)
    cls = getattr(optuna.pruners, PRUNERS[spec["name"]])
    try:
        return cls(**spec["settings"])
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"hydra.sweeper.pruner_settings do not fit pruner={spec['name']}: {err}"
        ) from None
