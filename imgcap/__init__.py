"""imgcap: Show, Attend and Tell image captioning with PyTorch Lightning and Hydra.

``from imgcap import Captioner`` is the Python API (see :mod:`imgcap.api.captioner`); it is imported
on first use so that ``import imgcap.decoders`` stays free of Lightning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Captioner"]


def __getattr__(name: str) -> Any:
    if name == "Captioner":
        from imgcap.api.captioner import Captioner

        return Captioner
    raise AttributeError(f"module 'imgcap' has no attribute {name!r}")
