"""Objects built from config nodes (``_target_``), for the tasks and the loggers alike."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate

from imgcap.errors import ImgcapError


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a user mistake found while building (an ImgcapError,
    e.g. an unknown encoder arch) surfaces as itself rather than wrapped in Hydra's error."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ImgcapError):
            raise err.__cause__ from None
        raise
