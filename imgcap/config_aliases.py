"""The design card's flat settings (``model.attention_dim=512``) as aliases of where they live.

The decoder and the objective became config groups of their own (``model.decoder.*``,
``model.objective.*``), but the card's command lines are a contract with users, so the old
spellings keep working: on the command line, in ``-m`` sweeps and in Optuna search spaces,
all through :func:`canonical_override`. The saved run config shows the real key.

An alias is rewritten to ``++<real key>`` (set or add): a key the selected decoder or
objective does not have (``model.attention_dim`` with ``model/decoder=transformer``) then
composes, and the settings check that runs after composition refuses it in one line naming
both spellings (:func:`alias_of`), instead of Hydra's multi-line override error.
"""

from __future__ import annotations

# Old flat key -> the key it names now.
ALIASES: dict[str, str] = {
    **{
        f"model.{key}": f"model.decoder.{key}"
        for key in ("attention_dim", "embed_dim", "decoder_dim", "dropout", "deep_output")
    },
    "model.decoder_unroll": "model.decoder.unroll",
    "model.alpha_c": "model.objective.alpha_c",
}
_OLD_NAMES = {new: old for old, new in ALIASES.items()}


def canonical_key(key: str) -> str:
    """``model.attention_dim`` -> ``model.decoder.attention_dim``; other keys unchanged."""
    return ALIASES.get(key, key)


def alias_of(key: str) -> str | None:
    """The old flat spelling of a real key (``model.decoder.attention_dim`` ->
    ``model.attention_dim``), or None when it has none."""
    return _OLD_NAMES.get(key)


def canonical_override(arg: str) -> str:
    """One Hydra override with an aliased key rewritten; anything else is returned as given.

    ``model.attention_dim=256,512`` -> ``++model.decoder.attention_dim=256,512``;
    ``~model.alpha_c`` -> ``~model.objective.alpha_c``. Values (sweeps, ``choice(...)``) are
    kept verbatim.
    """
    key, sep, value = arg.partition("=")
    stripped = key.lstrip("+~")
    if stripped not in ALIASES:
        return arg
    prefix = "~" if key.startswith("~") else "++"
    return f"{prefix}{ALIASES[stripped]}{sep}{value}"


def canonical_overrides(args: list[str]) -> list[str]:
    """:func:`canonical_override` over a command line (options such as ``-m`` pass through)."""
    return [a if a.startswith("-") else canonical_override(a) for a in args]
