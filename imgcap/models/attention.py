"""Additive (Bahdanau-style) soft attention over the encoder's grid of region features.

    alpha = softmax_P( w^T tanh(W_e e + W_h h) )        context = sum_P alpha * e

``W_e e`` does not depend on the decoding step, so it is split out as ``project`` and computed
once per image; ``forward`` then only adds ``W_h h`` each step.
"""

from __future__ import annotations

import torch
from torch import nn


class AdditiveAttention(nn.Module):
    """Layers: ``encoder_proj`` (C -> A), ``decoder_proj`` (D -> A), ``score`` (A -> 1)."""

    def __init__(self, encoder_dim: int, decoder_dim: int, attention_dim: int):
        super().__init__()
        self.encoder_dim = encoder_dim
        self.decoder_dim = decoder_dim
        self.attention_dim = attention_dim
        self.encoder_proj = nn.Linear(encoder_dim, attention_dim)  # W_e
        self.decoder_proj = nn.Linear(decoder_dim, attention_dim)  # W_h
        self.score = nn.Linear(attention_dim, 1)  # w

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, P, C) -> W_e e (B, P, A). Call once per image, reuse at every step."""
        return self.encoder_proj(features)

    def forward(
        self, projected: torch.Tensor, features: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """projected (B, P, A) from ``project``, features (B, P, C), h (B, D)
        -> context (B, C), alpha (B, P) (non-negative, sums to 1 over P)."""
        hidden = torch.tanh(projected + self.decoder_proj(h).unsqueeze(1))  # (B, P, A)
        alpha = self.score(hidden).squeeze(-1).softmax(dim=-1)  # (B, P)
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (B, C)
        return context, alpha
