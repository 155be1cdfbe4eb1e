"""Decoders by name: ``model/decoder=<name>`` in the config (see :mod:`imgcap.registry`).

Built-in decoders register themselves when :mod:`imgcap.decoders` is imported; the class must
implement the decoder contract (:mod:`imgcap.decoders.contract`). ``DECODERS`` iterates over
the registered names; ``DECODERS[name]`` is the class (and its ``settings_class``, if any).

    @register_decoder("my_decoder", aliases=("mine",))
    class MyDecoder(nn.Module):
        settings_class = MySettings       # optional: a dataclass of imgcap.settings.Settings
        def __init__(self, vocab_size, encoder_dim, *args, settings=None, **kwargs): ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from imgcap.registry import Registry

DECODERS = Registry("decoder", "model.decoder")
register_decoder = DECODERS.register


def build_decoder(config: Mapping[str, Any], vocab_size: int, encoder_dim: int) -> nn.Module:
    """``{"name": ..., **settings}`` -> the decoder, sized to the vocabulary and the encoder."""
    return DECODERS.build(config, vocab_size=vocab_size, encoder_dim=encoder_dim)
