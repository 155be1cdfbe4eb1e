"""The one plug-in mechanism: decoders (``model/decoder``), training objectives
(``model/objective``) and annotation readers (``data.layout``) register the same way, in a
:class:`Registry`, under a name and optional aliases.

A decoder or objective is built from a config node ``{"name": ..., **settings}`` holding plain
values, which is also how checkpoints store it (they load with ``weights_only``). Its class is
found by its registered name, an alias, or its import path (``name:
my_package.my_module:MyClass``), so one's own decoder or objective needs no edit anywhere in
imgcap. A class that declares a settings dataclass (``settings_class``, see
:mod:`imgcap.settings`) has its settings checked by it, once, when built; the dataclass is also
the schema of its config group (:meth:`Registry.store_schemas`). A class without one is checked
against its constructor's keyword arguments.

Readers register an instance per class and are found by name or alias only; the registry
imports every module of their package on first use (``discover``), so a new format is one new
module.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from imgcap.config_aliases import alias_of
from imgcap.errors import ConfigError
from imgcap.settings import Settings, settings_of


class Registry:
    """Classes by name for one config node (``config_key``, e.g. ``model.decoder``).

    Iterating a registry gives its canonical names (sorted); ``registry[name]`` the class.
    ``fixed`` arguments of :meth:`build` (e.g. the vocabulary size) come from the program, not
    the config, and are not settings. ``discover``: a package whose modules are all imported
    the first time the registry is read, so that the plug-ins in them register.
    """

    def __init__(self, kind: str, config_key: str, discover: str | None = None) -> None:
        self.kind = kind
        self.config_key = config_key
        self.classes: dict[str, type] = {}
        #: every accepted name (canonical names and aliases) -> the canonical name
        self.aliases: dict[str, str] = {}
        self._discover_package = discover
        self._discovered = discover is None

    # ---- registering ----------------------------------------------------------------------

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
        """Class decorator: make the class available as ``name`` and as each of ``aliases``.

        A name or alias another class holds is refused (a programming error, raised as an
        AssertionError that ``python -O`` does not remove)."""

        def add(cls: type) -> type:
            for key in (name, *aliases):
                owner = self.aliases.get(key)
                if owner is not None and self.classes[owner] is not cls:
                    raise AssertionError(
                        f"{self.kind} name {key!r} of {cls.__qualname__} is already taken by "
                        f"{owner!r}"
                    )
            self.classes[name] = cls
            for key in (name, *aliases):
                self.aliases[key] = name
            return cls

        return add

    def discover(self) -> None:
        """Import every module of the ``discover`` package once (their plug-ins register)."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self._discover_package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_") and module.name != "base":
                importlib.import_module(f"{self._discover_package}.{module.name}")

    # ---- reading --------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The canonical names, sorted."""
        self.discover()
        return sorted(self.classes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self.aliases

    def __getitem__(self, name: str) -> type:
        found = self.find(name)
        if found is None:
            raise KeyError(name)
        return found

    def aliases_of(self, name: str) -> list[str]:
        """The other names of the class registered as ``name``."""
        return [a for a, n in self.aliases.items() if n == name and a != name]

    def canonical(self, name: str) -> str | None:
        """The canonical name of ``name`` (itself or an alias), or None when unknown."""
        self.discover()
        return self.aliases.get(str(name))

    def find(self, name: str) -> type | None:
        """The class registered as ``name`` or an alias of it, or None."""
        key = self.canonical(name)
        return None if key is None else self.classes[key]

    def get(self, name: str) -> type:
        """The class registered as ``name`` (or an alias), or imported from
        ``package.module:Class``; a one-line ConfigError otherwise."""
        found = self.find(name)
        if found is not None:
            return found
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

    # ---- building from a config node ------------------------------------------------------

    def _accepted(self, cls: type, fixed: tuple[str, ...]) -> list[str] | None:
        """The setting names ``cls`` takes (None: any keyword)."""
        settings = settings_of(cls)
        if settings is not None:
            return settings.names()
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return [p for p in params if p != "self" and p not in fixed]

    def settings(self, config: Mapping[str, Any], *fixed: str) -> tuple[type, Any]:
        """``{"name": ..., **settings}`` -> (the class, its checked settings): the settings
        dataclass instance when the class declares one, else the settings as a dict.

        A config naming no known class, a setting the class does not take or (for classes with
        a settings dataclass) a bad value is a one-line ConfigError naming the key. ``fixed``
        names the arguments the program supplies."""
        values = dict(config)
        name = values.pop("name", None)
        if not name:
            raise ConfigError(f"{self.config_key} needs a name (one of {self.names()})")
        cls = self.get(str(name))
        accepted = self._accepted(cls, fixed)
        unknown = sorted(set(values) - set(accepted)) if accepted is not None else []
        if unknown:
            key = f"{self.config_key}.{unknown[0]}"
            old = alias_of(key)
            spelled = f"{old} (= {key})" if old else key
            raise ConfigError(
                f"{spelled} is not a setting of the {name} {self.kind}; its settings are {accepted}"
            )
        settings_class = settings_of(cls)
        return cls, (settings_class(**values) if settings_class is not None else values)

    def check(self, config: Mapping[str, Any], *fixed: str) -> None:
        """Raise a one-line ConfigError when ``config`` names no known class, holds a setting
        its class does not take, or a value its settings dataclass refuses.

        Runs once when the config is checked, before any data is read, and in :meth:`build`
        for configs that never went through the checks (checkpoints, tests)."""
        self.settings(config, *fixed)

    def build(self, config: Mapping[str, Any], **fixed: Any) -> Any:
        """``{"name": ..., **settings}`` -> an instance, with ``fixed`` arguments added.

        A class with a settings dataclass receives it checked, as ``settings=``; any other
        class receives the settings as keyword arguments."""
        cls, settings = self.settings(config, *fixed)
        if isinstance(settings, Settings):
            return cls(**fixed, settings=settings)
        return cls(**fixed, **settings)

    # ---- Hydra ----------------------------------------------------------------------------

    def store_schemas(self) -> None:
        """Store each registered class's settings dataclass in Hydra's ConfigStore as
        ``<group>/<name>_schema`` (group = ``config_key`` with slashes, ``model/decoder``), the
        base its YAML file extends (``defaults: [<name>_schema, _self_]``).

        The node stored holds the dataclass's defaults as plain values, without OmegaConf's
        types: types and ranges are checked by the dataclass when the plug-in is built, so that
        a bad value (``model.decoder.attention_dim=abc``) or a setting another decoder has
        (``model.attention_dim`` with ``model/decoder=transformer``) still composes and is then
        refused in one line naming the key, rather than by a multi-line Hydra merge error."""
        from hydra.core.config_store import ConfigStore
        from omegaconf import OmegaConf

        store = ConfigStore.instance()
        group = self.config_key.replace(".", "/")
        for name, cls in self.classes.items():
            settings = settings_of(cls)
            if settings is not None:
                node = OmegaConf.create({"name": name, **settings.defaults()})
                store.store(group=group, name=f"{name}_schema", node=node, provider="imgcap")
