"""Training objectives (torch only, no Lightning): the seam is :mod:`imgcap.objectives.base`.

Importing this package registers the built-in objectives: ``xe`` (cross-entropy) and ``scst``
(self-critical sequence training with a CIDEr-D reward, :mod:`imgcap.objectives.reward`).
"""

from imgcap.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveContext,
    build_objective,
    register_objective,
)
from imgcap.objectives.reward import CiderDReward
from imgcap.objectives.scst import SCSTSettings, SelfCritical
from imgcap.objectives.xe import CrossEntropy, XESettings, xe_attention_loss

__all__ = [
    "OBJECTIVES",
    "CiderDReward",
    "CrossEntropy",
    "Objective",
    "ObjectiveContext",
    "build_objective",
    "SCSTSettings",
    "SelfCritical",
    "XESettings",
    "register_objective",
    "xe_attention_loss",
]
