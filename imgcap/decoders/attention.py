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
        """projected (B, P, A) from ``project``, features (B, P, C), h (N, D) with N = B * g:
        g decoding rows (beams, samples) per image, image-major
        -> context (N, C), alpha (N, P) (non-negative, sums to 1 over P).

        The g rows of an image attend over its one copy of the features, broadcast rather
        than repeated: beam search never copies the (B, P, C) grid k times."""
        B, P, A = projected.shape
        g = h.shape[0] // B
        att_h = self.decoder_proj(h).view(B, g, 1, A)
        hidden = torch.tanh(projected.unsqueeze(1) + att_h)  # (B, g, P, A)
        alpha = self.score(hidden).squeeze(-1).softmax(dim=-1)  # (B, g, P)
        context = torch.bmm(alpha, features)  # (B, g, C)
        return context.reshape(B * g, -1), alpha.reshape(B * g, P)
