"""Cross-entropy with the doubly stochastic attention penalty (Show, Attend and Tell, eq. 14)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imgcap.data.vocab import PAD_ID


def xe_attention_loss(
    logits: torch.Tensor, alphas: torch.Tensor, targets: torch.Tensor, alpha_c: float
) -> dict[str, torch.Tensor]:
    """Cross-entropy over non-pad targets + ``alpha_c * ((1 - sum_t alpha_t)^2).mean()``.

    logits (B, T-1, V), alphas (B, T-1, P) from the decoder's teacher-forced forward;
    targets (B, T-1) = ``captions[:, 1:]`` with ``<pad>`` after ``<end>``.
    Returns ``{"loss", "xe", "att_reg"}`` (scalars).
    """
    xe = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=PAD_ID
    )
    # Attention at padded steps is not part of the caption, so it does not count.
    mask = (targets != PAD_ID).unsqueeze(-1).to(alphas.dtype)  # (B, T-1, 1)
    attention_total = (alphas * mask).sum(dim=1).float()  # (B, P)
    att_reg = alpha_c * ((1.0 - attention_total) ** 2).mean()
    return {"loss": xe + att_reg, "xe": xe, "att_reg": att_reg}
