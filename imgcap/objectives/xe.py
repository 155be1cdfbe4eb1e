"""Cross-entropy with the doubly stochastic attention penalty (Show, Attend and Tell, eq. 14)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from imgcap.objectives.base import Objective, register_objective
from imgcap.settings import Settings, number
from imgcap.tokens import PAD_ID


@dataclass(frozen=True)
class XESettings(Settings):
    """Cross-entropy's settings (``model.objective.*``; ``conf/model/objective/xe.yaml``).

    alpha_c: weight of the doubly stochastic attention penalty (0: plain cross-entropy).
    """

    config_key: ClassVar[str] = "model.objective"

    alpha_c: float = number(1.0)


def xe_attention_loss(
    logits: torch.Tensor, alphas: torch.Tensor | None, targets: torch.Tensor, alpha_c: float
) -> dict[str, torch.Tensor]:
    """Cross-entropy over non-pad targets + ``alpha_c * ((1 - sum_t alpha_t)^2).mean()``.

    logits (B, T-1, V), alphas (B, T-1, P) from the decoder's teacher-forced forward (``None``
    for a decoder without per-step attention: no penalty); targets (B, T-1) =
    ``captions[:, 1:]`` with ``<pad>`` after ``<end>``. Returns ``{"loss", "xe", "att_reg"}``.
    """
    xe = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=PAD_ID
    )
    if alphas is None or alpha_c == 0:
        att_reg = xe.new_zeros(())
    else:
        # Attention at padded steps is not part of the caption, so it does not count.
        mask = (targets != PAD_ID).unsqueeze(-1).to(alphas.dtype)  # (B, T-1, 1)
        attention_total = (alphas * mask).sum(dim=1).float()  # (B, P)
        att_reg = alpha_c * ((1.0 - attention_total) ** 2).mean()
    return {"loss": xe + att_reg, "xe": xe, "att_reg": att_reg}


@register_objective("xe")
class CrossEntropy(Objective):
    """Teacher forcing (or scheduled sampling, ratio < 1) with the attention penalty.

    Settings: :class:`XESettings` (its fields by name, or ``settings=`` an instance).
    """

    settings_class = XESettings

    def __init__(self, *args: Any, settings: XESettings | None = None, **kwargs: Any) -> None:
        self.settings = settings or XESettings.from_args(*args, **kwargs)
        self.alpha_c = float(self.settings.alpha_c)

    def __call__(
        self,
        decoder: torch.nn.Module,
        features: torch.Tensor,
        batch: dict[str, Any],
        teacher_forcing_ratio: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        captions = batch["captions"]
        logits, alphas = decoder(
            features, captions, batch.get("lengths"), teacher_forcing_ratio=teacher_forcing_ratio
        )
        losses = xe_attention_loss(logits, alphas, captions[:, 1:], self.alpha_c)
        losses["perplexity"] = torch.exp(losses["xe"].detach())
        return losses
