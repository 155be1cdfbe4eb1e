"""Explicit checks of the model and data settings, run before any work, naming the key.

Hydra passes command-line values through as typed by the user (``model.decoder.attention_dim=abc`` is
the string "abc"); without these checks a bad value surfaces as a torch or Hydra error that
does not name the key, or (``model.beam_size=0``) only after a full epoch of training.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imgcap.data.sizes import DATA_SIZES, check_data_sizes
from imgcap.errors import ConfigError
from imgcap.settings import check_beam_size, check_int, check_number


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as err:  # an interpolation that does not resolve, a missing value
        raise ConfigError(f"{key}: {str(err).splitlines()[0]}") from None


def _int(cfg: DictConfig, key: str, minimum: int, optional: bool = False) -> None:
    check_int(key, _value(cfg, key), minimum, optional)


def _float(cfg: DictConfig, key: str, low: float, high: float, high_open: bool = False) -> None:
    check_number(key, _value(cfg, key), low, high, high_open)


def _check_plugin_settings(model: DictConfig) -> None:
    """The selected decoder's and objective's settings, by their settings dataclass (names,
    types, ranges); a plug-in without one is checked against its constructor's arguments."""
    from imgcap.decoders import DECODERS
    from imgcap.objectives import OBJECTIVES

    for key, registry, fixed in (
        ("decoder", DECODERS, ("vocab_size", "encoder_dim")),
        ("objective", OBJECTIVES, ()),
    ):
        node = model.get(key)
        if OmegaConf.is_dict(node) and node.get("name"):
            registry.check(OmegaConf.to_container(node, resolve=True), *fixed)


def check_model_config(cfg: DictConfig) -> None:
    """``cfg`` is the run config (with ``model``); raises ConfigError naming the first bad key."""
    model = cfg.get("model")
    if model is None:
        return
    for key in ("encoded_size", "max_len"):
        if key in model:
            _int(cfg, f"model.{key}", 1)
    if "beam_size" in model:
        check_beam_size(_value(cfg, "model.beam_size"), "model.beam_size")
    # A setting the selected decoder or objective does not take (e.g. the card's
    # model.attention_dim with model/decoder=transformer) or a bad value of one it takes is
    # refused before any work, by the plug-in's settings dataclass.
    _check_plugin_settings(model)
    if "teacher_forcing_ratio" in model:
        _float(cfg, "model.teacher_forcing_ratio", 0.0, 1.0)
    if "length_penalty" in model:
        _float(cfg, "model.length_penalty", -10.0, 10.0)
    if "val_meteor" in model:
        from imgcap.captioning_module import VAL_METEOR_CHOICES

        value = _value(cfg, "model.val_meteor")
        if value not in VAL_METEOR_CHOICES:
            raise ConfigError(
                f"model.val_meteor={value!r} must be one of {', '.join(VAL_METEOR_CHOICES)} "
                "(which validations add METEOR; default last)"
            )
    schedule = _value(cfg, "model.teacher_forcing_schedule")
    if schedule is not None:
        if not OmegaConf.is_dict(schedule) or set(schedule) != {"end", "epochs"}:
            raise ConfigError(
                f"model.teacher_forcing_schedule={schedule!r} must be null or {{end: 0.75, epochs: 10}}"
            )
        _float(cfg, "model.teacher_forcing_schedule.end", 0.0, 1.0)
        _int(cfg, "model.teacher_forcing_schedule.epochs", 1)
    for key in ("optimizer.lr", "encoder.lr"):
        if OmegaConf.select(model, key) is not None:
            _float(cfg, f"model.{key}", 0.0, math.inf)


def check_data_config(cfg: DictConfig) -> None:
    data = cfg.get("data")
    if data is None:
        return
    check_data_sizes({key: _value(cfg, f"data.{key}") for key in DATA_SIZES if key in data})
    if "num_workers" in data and _value(cfg, "data.num_workers") != "auto":
        _int(cfg, "data.num_workers", 0)
    for key in ("split_seed", "shuffle_seed"):
        if key in data:
            _int(cfg, f"data.{key}", 0)
    for key in ("augment", "preload", "cache_features", "pin_memory", "persistent_workers"):
        value = _value(cfg, f"data.{key}") if key in data else False
        if not isinstance(value, bool):
            raise ConfigError(f"data.{key}={value!r} must be true or false")


def check_train_config(cfg: DictConfig) -> None:
    """Every check that is cheap enough to run before any data is read or model is built."""
    check_model_config(cfg)
    check_data_config(cfg)
    trainer = cfg.get("trainer") or {}
    if "max_epochs" in trainer:
        _int(cfg, "trainer.max_epochs", -1)
    if "check_val_every_n_epoch" in trainer:
        _int(cfg, "trainer.check_val_every_n_epoch", 1, optional=True)
    if "precision" in trainer:
        _precision(cfg)


def _precision(cfg: DictConfig) -> None:
    """trainer.precision among Lightning's values, checked before any work (and before the
    config tree is shown) rather than when the Trainer is built."""
    from typing import get_args

    try:
        from lightning.fabric.connector import (
            _PRECISION_INPUT_INT,
            _PRECISION_INPUT_STR,
            _PRECISION_INPUT_STR_ALIAS,
        )
    except ImportError:  # another Lightning release: the Trainer checks it when built
        return

    value = _value(cfg, "trainer.precision")
    allowed = [*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)]
    allowed += [str(v) for v in get_args(_PRECISION_INPUT_INT)]
    if value is not None and str(value) not in allowed:
        raise ConfigError(
            f"trainer.precision={value!r} is not a precision Lightning knows: use one of "
            f"{', '.join(get_args(_PRECISION_INPUT_STR))} (or leave the default)"
        )


def register_config_schemas() -> None:
    """Store every registered decoder's and objective's settings dataclass in Hydra's
    ConfigStore as the schema its YAML extends (``model/decoder/lstm_attention_schema``, ...;
    see :meth:`imgcap.registry.Registry.store_schemas`). Must run before a config that selects
    a decoder or an objective is composed; idempotent."""
    from imgcap.decoders import DECODERS
    from imgcap.objectives import OBJECTIVES

    DECODERS.store_schemas()
    OBJECTIVES.store_schemas()
