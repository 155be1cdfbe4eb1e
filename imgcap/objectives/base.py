"""The objective seam: what turns a training batch into a loss.

An objective is called by the LightningModule's training step as
``objective(decoder, features, batch, teacher_forcing_ratio=r)`` and returns a dict of scalar
tensors: ``"loss"`` (what is minimised) and anything else worth logging (each is logged as
``train/<name>``). It reaches the decoder only through the decoder contract
(:mod:`imgcap.decoders.contract`). Objectives are picked by ``model/objective=<name>`` and built
from ``{"name": ..., **settings}`` (:data:`OBJECTIVES`); adding one is a registered class.

The training batch (see :mod:`imgcap.data.datasets`): ``captions`` (B, T) long, ``lengths``
(B,), ``references`` (list of B lists of raw caption strings), ``image_ids``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from imgcap.registry import Registry

OBJECTIVES = Registry("objective", "model.objective")
register_objective = OBJECTIVES.register


@dataclass
class ObjectiveContext:
    """What an objective may need besides the batch, given once before training.

    words: the vocabulary in id order (ids -> words).
    normalize: caption string -> its words, as the vocabulary was built (references are
        compared with decoded words through it).
    train_references: for each training image, its raw reference captions (e.g. a CIDEr-D
        reward's document frequencies); None when the data module cannot list them.
    max_len: the longest caption decoding may produce.
    """

    words: Sequence[str]
    normalize: Callable[[str], list[str]]
    train_references: Sequence[Sequence[str]] | None = None
    max_len: int = 20


class Objective:
    """Base class: subclasses implement ``__call__``; ``setup`` is optional."""

    #: Names of returned values the module also logs as epoch means (``train/<name>_epoch``).
    epoch_means: tuple[str, ...] = ()
    #: Example captions of the latest step (``[{image_id, caption, ...}]``) for loggers, if any.
    logged_samples: list[dict[str, Any]] | None = None

    def setup(self, context: ObjectiveContext) -> None:
        """Called once before training starts (after the vocabulary exists)."""

    def __call__(
        self,
        decoder: torch.nn.Module,
        features: torch.Tensor,
        batch: dict[str, Any],
        teacher_forcing_ratio: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def build_objective(config: dict[str, Any]) -> Objective:
    """``{"name": ..., **settings}`` -> the objective."""
    return OBJECTIVES.build(config)
