"""The attention LSTM's teacher-forced unrolls: the same step (:mod:`imgcap.decoders.lstm_cell`)
run over a whole caption batch in one of two ways (``model.decoder.unroll``):

* :func:`unroll_shrinking` (``shrink``): sort by length and run step t on the captions still
  going only (the rows ``[:n_t]``). Least arithmetic; the batch size changes every step and
  reading the step counts costs one host sync. Fastest on the CPU, where arithmetic is the
  cost. Also the scheduled-sampling path (``teacher_forcing_ratio < 1``).
* :func:`unroll_fixed` (``fixed``): every step runs on the whole (B, ...) batch; padded
  positions are masked at the end. Static shapes and no host sync, so the unroll can be
  captured as a CUDA graph (:mod:`imgcap.decoders.cuda_graphs` replays it): on a GPU, where
  kernel launches rather than arithmetic bound this small recurrence, that is what makes it
  fast.

Both hoist what does not depend on the recurrence out of the loop (the embedding half of the
LSTM input gates for all steps is one matmul) and compute the output layer once over all steps.
Both give the decoder's ``step`` logits to float tolerance (tests/decoders/test_decoder_paths.py).
"""

from __future__ import annotations

import torch
from torch import nn

from imgcap.decoders.lstm_cell import attend_and_update, input_gates


def unroll_shrinking(
    decoder: nn.Module,
    features: torch.Tensor,
    captions: torch.Tensor,
    lengths: torch.Tensor | None = None,
    teacher_forcing_ratio: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's ``forward`` with the shrinking batch; see its docstring for the arguments.
    features (B, P, C), captions (B, T) -> logits (B, T-1, V), alphas (B, T-1, P)."""
    B, T = captions.shape
    steps = T - 1
    device = captions.device
    if lengths is None:
        dec_len = torch.full((B,), steps, dtype=torch.long, device=device)
    else:
        dec_len = (lengths.to(device=device, dtype=torch.long) - 1).clamp(0, steps)
    # Sort longest first so the captions still running at step t are a prefix of the batch:
    # each step then runs on rows [:n_t] only, and finished captions cost nothing.
    order = None
    if lengths is not None:
        dec_len, order = dec_len.sort(descending=True, stable=True)
        features, captions = features[order], captions[order]
    active = dec_len.unsqueeze(0) > torch.arange(steps, device=device).unsqueeze(1)
    counts = active.sum(1).tolist()  # (T-1,) rows active per step; one host sync

    state = decoder.init_state(features)
    weights = state.weights
    h, c = state.h, state.c
    projected = state.projected  # (B, P, A); None: recomputed every step (the benchmark's case)
    sampling = teacher_forcing_ratio < 1.0
    if not sampling:
        inputs = decoder.embedding(captions[:, :-1])  # (B, T-1, E), ground truth at every step
        x_gates_all = input_gates(weights, inputs)  # (B, T-1, 4D), one matmul for all steps
    outs, alphas = [], []  # per step: logits or (h, z, emb) rows, and (n_t, P)
    prev_pred = captions[:, 0]
    for t, n in enumerate(counts):
        if n == 0:
            break
        h, c = h[:n], c[:n]
        if not sampling:
            emb, x_gates = inputs[:n, t], x_gates_all[:n, t]  # (n, E), (n, 4D)
        else:
            tokens = captions[:n, t]
            if t > 0:
                use_pred = (
                    torch.rand(n, device=device, generator=generator) >= teacher_forcing_ratio
                )
                tokens = torch.where(use_pred, prev_pred[:n], tokens)
            emb = decoder.embedding(tokens)  # (n, E)
            x_gates = input_gates(weights, emb)
        step_projected = (
            projected[:n] if projected is not None else decoder.attention.project(features[:n])
        )
        h, c, z, alpha = attend_and_update(weights, x_gates, h, c, step_projected, features[:n])
        alphas.append(alpha)
        if sampling:
            logits = decoder.output_logits(h, z, emb)  # (n, V)
            prev_pred = logits.argmax(-1)  # no gradient flows through the choice
            outs.append(logits)
        else:
            outs.append((h, z, emb))

    if not alphas:  # T == 1 or all lengths <= 1: nothing to predict
        return (
            features.new_zeros(B, steps, decoder.vocab_size),
            features.new_zeros(B, steps, features.shape[1]),
        )
    if sampling:
        packed_logits = torch.cat(outs)  # (sum n_t, V)
    else:
        # one large output matmul over all steps instead of T-1 small ones
        h_all, z_all, e_all = (torch.cat(x) for x in zip(*outs, strict=True))
        packed_logits = decoder.output_logits(h_all, z_all, e_all)  # (sum n_t, V)
    packed_alphas = torch.cat(alphas)  # (sum n_t, P)

    # rows are packed step-major, which is the order of the True entries of active (T-1, B)
    logits = packed_logits.new_zeros(steps, B, decoder.vocab_size)
    logits[active] = packed_logits
    alpha_out = packed_alphas.new_zeros(steps, B, features.shape[1])
    alpha_out[active] = packed_alphas
    logits, alpha_out = logits.transpose(0, 1), alpha_out.transpose(0, 1)  # (B, T-1, ...)
    if order is not None:
        inverse = torch.argsort(order)  # undo the length sort
        logits, alpha_out = logits[inverse], alpha_out[inverse]
    return logits, alpha_out


def unroll_fixed(
    decoder: nn.Module, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced ``forward`` with static shapes: every step runs on all B rows.

    features (B, P, C), captions (B, T) long, lengths (B,) long on the captions' device
    -> logits (B, T-1, V), alphas (B, T-1, P), zero after each caption's last step.
    No host sync and no data-dependent branch, so it can be captured as a CUDA graph.
    """
    B, T = captions.shape
    steps = T - 1
    if steps == 0:
        return (
            features.new_zeros(B, 0, decoder.vocab_size),
            features.new_zeros(B, 0, features.shape[1]),
        )
    state = decoder.init_state(features)
    weights = state.weights
    projected = state.projected
    if projected is None:
        projected = decoder.attention.project(features)  # (B, P, A)
    h, c = state.h, state.c
    emb = decoder.embedding(captions[:, :-1])  # (B, T-1, E)
    x_gates = input_gates(weights, emb)  # (B, T-1, 4D), one matmul for all steps
    hs, zs, alphas = [], [], []
    for t in range(steps):
        h, c, z, alpha = attend_and_update(weights, x_gates[:, t], h, c, projected, features)
        hs.append(h)
        zs.append(z)
        alphas.append(alpha)
    h_all, z_all = torch.stack(hs, 1), torch.stack(zs, 1)  # (B, T-1, D), (B, T-1, C)
    logits = decoder.output_logits(h_all, z_all, emb)  # (B, T-1, V), one matmul
    # Caption i predicts lengths[i] - 1 tokens; later positions are padding targets.
    positions = torch.arange(steps, device=captions.device).unsqueeze(0)  # (1, T-1)
    mask = (positions < (lengths - 1).unsqueeze(1)).unsqueeze(-1)  # (B, T-1, 1)
    alpha_all = torch.stack(alphas, 1)  # (B, T-1, P)
    return logits * mask.to(logits.dtype), alpha_all * mask.to(alpha_all.dtype)
