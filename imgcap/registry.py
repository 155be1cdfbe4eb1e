"""Named building blocks picked from the config: decoders (``model/decoder``) and training
objectives (``model/objective``).

A config node ``{"name": ..., **settings}`` names the class and holds its settings as plain
values, which is also how checkpoints store it (they load with ``weights_only``). A class is
found by its registered name or by its import path, ``name: my_package.my_module:MyClass``, so
one's own decoder or objective needs no edit anywhere in imgcap.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from imgcap.config_aliases import alias_of
from imgcap.errors import ConfigError


class Registry:
    """Classes by name for one config node (``config_key``, e.g. ``model.decoder``).

    ``fixed`` arguments of :meth:`build` (e.g. the vocabulary size) come from the program, not
    the config, and are not settings.
    """

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self.classes: dict[str, type] = {}

    def names(self) -> list[str]:
        return sorted(self.classes)

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: make the class available as ``<config_key>.name=<name>``."""

        def add(cls: type) -> type:
            if self.classes.get(name, cls) is not cls:
                raise ValueError(f"{self.kind} name {name!r} is taken by {self.classes[name]}")
            self.classes[name] = cls
            return cls

        return add

    def get(self, name: str) -> type:
        """The class registered as ``name``, or imported from ``package.module:Class``."""
        if name in self.classes:
            return self.classes[name]
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as err:
                raise ConfigError(
                    f"{self.config_key}.name={name!r} cannot be imported ({err}); "
                    "give a registered name or package.module:Class"
                ) from None
        raise ConfigError(
            f"unknown {self.kind} {self.config_key}.name={name!r}: choose one of {self.names()} "
            "or give package.module:Class"
        )

    def check(self, config: Mapping[str, Any], *fixed: str) -> None:
        """Raise a one-line ConfigError when ``config`` names no known class or holds a setting
        its class does not take. ``fixed`` names the arguments the program supplies.

        Runs once when the config is checked, before any data is read, and again in
        :meth:`build` for configs that never went through the checks (checkpoints, tests)."""
        settings = dict(config)
        name = settings.pop("name", None)
        if not name:
            raise ConfigError(f"{self.config_key} needs a name (one of {self.names()})")
        params = inspect.signature(self.get(str(name)).__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        accepted = [p for p in params if p != "self" and p not in fixed]
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            key = f"{self.config_key}.{unknown[0]}"
            old = alias_of(key)
            spelled = f"{old} (= {key})" if old else key
            raise ConfigError(
                f"{spelled} is not a setting of the {name} {self.kind}; its settings are {accepted}"
            )

    def build(self, config: Mapping[str, Any], **fixed: Any) -> Any:
        """``{"name": ..., **settings}`` -> an instance, with ``fixed`` arguments added.

        A setting the class does not take is a one-line ConfigError naming it and the ones
        it does take."""
        self.check(config, *fixed)
        settings = dict(config)
        cls = self.get(str(settings.pop("name")))
        return cls(**fixed, **settings)
