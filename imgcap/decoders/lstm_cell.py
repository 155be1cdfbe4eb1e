"""The Show-Attend-Tell step, written once: attention over the regions, the context gate and the
LSTM update, from the previous word's embedding and the state (h, c).

Every path of :class:`~imgcap.decoders.lstm_attention.AttentionLSTMDecoder` calls
:func:`attend_and_update`: decoding (``step``: greedy, beam search, sampling) and both
teacher-forced unrolls of :mod:`imgcap.decoders.lstm_unrolls` (shrinking batch, fixed shapes,
and the CUDA-graph replay of the fixed one). The weights are arranged once per decode or
training forward (:func:`cell_weights`) so that a step does little:

* everything that reads h is one matmul: ``[W_h; f_beta; W_hh] h`` -> (N, A + C + 4D);
* the embedding half of the LSTM input gates, with both LSTM biases, does not depend on the
  recurrence: ``W_x emb + b_ih + b_hh`` (:func:`input_gates`) can be computed for all steps at
  once by the unrolls;
* the gated context's half of the input gates is one ``addmm`` per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CellWeights:
    """A decoder's step weights, arranged for :func:`attend_and_update` (views and one
    concatenation of its parameters, so gradients reach them).

    w_h (A + C + 4D, D), b_h (A + C + 4D,): ``[W_h; f_beta; W_hh]`` and their biases (W_hh's
    bias is in ``b_x``). w_x (4D, E), b_x (4D,): the embedding half of the LSTM input weights
    and both LSTM biases. w_z (4D, C): the context half of the input weights. score: the
    attention's ``w`` (A -> 1). sizes: (A, C, 4D), how the h matmul splits.
    """

    w_h: torch.Tensor
    b_h: torch.Tensor
    w_x: torch.Tensor
    b_x: torch.Tensor
    w_z: torch.Tensor
    score: nn.Linear
    sizes: tuple[int, int, int]


def cell_weights(decoder: nn.Module) -> CellWeights:
    """Arrange ``decoder``'s parameters for the step (attention ``decoder_proj`` and
    ``score``, ``f_beta``, ``lstm``); cheap next to a decode or a training forward, done
    once for each."""
    lstm, attention = decoder.lstm, decoder.attention
    E = decoder.embed_dim
    four_d = lstm.weight_hh.shape[0]
    w_h = torch.cat([attention.decoder_proj.weight, decoder.f_beta.weight, lstm.weight_hh])
    b_h = torch.cat(
        [attention.decoder_proj.bias, decoder.f_beta.bias, lstm.bias_hh.new_zeros(four_d)]
    )
    return CellWeights(
        w_h=w_h,
        b_h=b_h,
        w_x=lstm.weight_ih[:, :E],
        b_x=lstm.bias_ih + lstm.bias_hh,
        w_z=lstm.weight_ih[:, E:],
        score=attention.score,
        sizes=(attention.attention_dim, decoder.encoder_dim, four_d),
    )


def input_gates(weights: CellWeights, emb: torch.Tensor) -> torch.Tensor:
    """emb (..., E) -> the embedding half of the LSTM gates plus both biases (..., 4D)."""
    return F.linear(emb, weights.w_x, weights.b_x)


def attend_and_update(
    weights: CellWeights,
    x_gates: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    projected: torch.Tensor,
    features: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step for N = B * g rows (g rows per image, image-major).

    x_gates (N, 4D) from :func:`input_gates`, h, c (N, D), projected (B, P, A) = W_e e,
    features (B, P, C) -> h, c (N, D), the gated context z (N, C), alpha (N, P).

        alpha = softmax_P(w^T tanh(W_e e + W_h h)),  context = sum_P alpha e
        z = sigmoid(f_beta(h)) * context
        i, f, g, o = x_gates + W_hh h + W_z z;  c' = s(f) c + s(i) tanh(g);  h' = s(o) tanh(c')
    """
    B, P, A = projected.shape
    N = h.shape[0]
    att_h, gate_h, hh = F.linear(h, weights.w_h, weights.b_h).split(weights.sizes, dim=1)
    # An image's g rows attend over its one copy of the grid (broadcast, never repeated).
    hidden = torch.tanh(projected.unsqueeze(1) + att_h.view(B, N // B, 1, A))  # (B, g, P, A)
    alpha = weights.score(hidden).squeeze(-1).softmax(dim=-1)  # (B, g, P)
    context = torch.bmm(alpha, features).reshape(N, -1)  # (N, C)
    z = torch.sigmoid(gate_h) * context  # (N, C)
    gates = torch.addmm(x_gates + hh, z, weights.w_z.t())  # (N, 4D), order i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c, z, alpha.reshape(N, P)
