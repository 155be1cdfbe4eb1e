"""Caption decoding: greedy and batched beam search. The one implementation every caller uses
(validation, test, ``evaluate.py``, ``caption.py``, SCST).

Both functions run under ``torch.no_grad``; putting the decoder in eval mode (dropout off) is the
caller's job. Every step goes through ``decoder.step``, the same function training uses.

Conventions: decoding starts from ``<start>``; at most ``max_len`` tokens are generated, counting
``<end>``. A caption that never emits ``<end>`` is cut at ``max_len`` words. Returned tokens
exclude ``<start>`` and ``<end>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imgcap.data.vocab import END_ID, PAD_ID, START_ID
from imgcap.errors import ConfigError
from imgcap.models.decoder import AttentionLSTMDecoder


@dataclass
class DecodeResult:
    """Decoded captions for B images.

    tokens: per image, the word ids (no <start>, no <end>).
    alphas: per image, a (L_i, P) tensor: the attention map that produced each word in tokens,
        on the features' device.
    scores: (B,) total log-probability of each returned caption (including its <end> token
        when emitted), before any length normalisation.
    ended: (B,) bool, whether the caption emitted <end> (False: cut at max_len).
    """

    tokens: list[list[int]]
    alphas: list[torch.Tensor]
    scores: torch.Tensor
    ended: torch.Tensor


def _next_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """logits (N, V) -> log-probabilities (N, V) in float32, with <pad> and <start> excluded."""
    never = torch.tensor([PAD_ID, START_ID], device=logits.device)
    return logits.float().index_fill(1, never, float("-inf")).log_softmax(-1)


def _check(max_len: int, beam_size: int = 1) -> None:
    if max_len < 1:
        raise ConfigError(f"decoding max_len must be >= 1, got {max_len}")
    if beam_size < 1:
        raise ConfigError(f"beam_size must be >= 1, got {beam_size}")


@torch.no_grad()
def greedy_decode(
    decoder: AttentionLSTMDecoder, features: torch.Tensor, max_len: int = 20
) -> DecodeResult:
    """Pick the most likely next word at every step. features (B, P, C)."""
    _check(max_len)
    B = features.shape[0]
    state = decoder.init_state(features)
    prev = torch.full((B,), START_ID, dtype=torch.long, device=features.device)
    scores = features.new_zeros(B, dtype=torch.float32)
    done = torch.zeros(B, dtype=torch.bool, device=features.device)
    steps_tokens, steps_alphas = [], []
    for _ in range(max_len):
        logits, alpha, state = decoder.step(prev, state)  # (B, V), (B, P)
        best_logp, tok = _next_log_probs(logits).max(-1)  # (B,), (B,)
        scores = scores + torch.where(done, torch.zeros_like(best_logp), best_logp)
        steps_tokens.append(torch.where(done, torch.full_like(tok, PAD_ID), tok))
        steps_alphas.append(alpha)
        done = done | (tok == END_ID)
        prev = tok
        if bool(done.all()):
            break
    tokens = torch.stack(steps_tokens, 1).tolist()  # (B, L)
    alphas = torch.stack(steps_alphas, 1)  # (B, L, P)
    out_tokens, out_alphas = [], []
    for i, row in enumerate(tokens):
        n = row.index(END_ID) if END_ID in row else len(row)
        out_tokens.append(row[:n])
        out_alphas.append(alphas[i, :n])
    return DecodeResult(out_tokens, out_alphas, scores, done)


@dataclass
class _Hypothesis:
    score: float  # sum of log-probs
    length: int  # generated tokens, counting <end> when emitted
    tokens: list[int]
    alphas: torch.Tensor  # (len(tokens), P)
    ended: bool


@torch.no_grad()
def beam_search(
    decoder: AttentionLSTMDecoder,
    features: torch.Tensor,
    beam_size: int = 3,
    max_len: int = 20,
    length_penalty: float = 1.0,
) -> DecodeResult:
    """Beam search batched over images: the B * k live hypotheses are one tensor.

    Each step takes, per image, the top ``k - n_finished`` continuations of its live beams;
    those ending in <end> are set aside as finished and shrink that image's beam, so an image is
    done after k hypotheses finished. Hypotheses still live at ``max_len`` compete too. The
    returned caption maximises ``score / length ** length_penalty`` (``length_penalty=0``:
    raw log-probability, which favours short captions). features (B, P, C).
    """
    _check(max_len, beam_size)
    B, P, _ = features.shape
    k, V = beam_size, decoder.vocab_size
    if k > V - 2:  # each live beam must have k finite continuations (<pad>, <start> excluded)
        raise ConfigError(f"beam_size={k} must be below the vocabulary size {V} minus 2")
    device = features.device
    # W_e e is computed for B images, then shared by their k beams
    state = decoder.init_state(features).index_select(
        torch.arange(B, device=device).repeat_interleave(k)
    )  # B * k rows, image-major
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # only beam 0 is live at first, else step 1 would yield k copies
    live = torch.full((B,), k, dtype=torch.long, device=device)  # beams each image may keep
    rank = torch.arange(k, device=device)
    row_base = (torch.arange(B, device=device) * k).unsqueeze(1)  # (B, 1)
    prev = torch.full((B * k,), START_ID, dtype=torch.long, device=device)
    hist_tokens = torch.empty(B * k, 0, dtype=torch.long, device=device)
    hist_alphas = features.new_empty(B * k, 0, P)
    finished: list[list[_Hypothesis]] = [[] for _ in range(B)]

    for t in range(max_len):
        logits, alpha, state = decoder.step(prev, state)  # (B*k, V), (B*k, P)
        logp = _next_log_probs(logits).view(B, k, V)
        cand = (scores.unsqueeze(-1) + logp).view(B, k * V)  # dead beams stay at -inf
        top_scores, top_idx = cand.topk(k, dim=1)  # (B, k), best first
        taken = (rank.unsqueeze(0) < live.unsqueeze(1)) & torch.isfinite(top_scores)
        top_scores = top_scores.masked_fill(~taken, float("-inf"))
        tok = top_idx % V  # (B, k)
        src_row = (row_base + top_idx // V).view(-1)  # (B*k,) the beam each continues
        hist_tokens = torch.cat([hist_tokens[src_row], tok.view(-1, 1)], dim=1)  # (B*k, t+1)
        hist_alphas = torch.cat([hist_alphas[src_row], alpha[src_row].unsqueeze(1)], dim=1)

        ended = taken & (tok == END_ID)  # (B, k)
        if bool(ended.any()):
            for b, j in ended.nonzero().tolist():
                row = b * k + j
                finished[b].append(
                    _Hypothesis(
                        float(top_scores[b, j]),
                        t + 1,
                        hist_tokens[row, :-1].tolist(),
                        hist_alphas[row, :-1],
                        True,
                    )
                )
            live = live - ended.sum(1)
        scores = top_scores.masked_fill(ended, float("-inf"))
        # a beam's source is a beam of the same image, so features and W_e e rows are unchanged
        state = state.with_hidden(state.h[src_row], state.c[src_row])
        prev = tok.view(-1)
        if not bool((live > 0).any()):
            break

    # hypotheses cut at max_len without <end> compete with the finished ones
    for b, j in torch.isfinite(scores).nonzero().tolist():
        row = b * k + j
        finished[b].append(
            _Hypothesis(
                float(scores[b, j]),
                hist_tokens.shape[1],
                hist_tokens[row].tolist(),
                hist_alphas[row],
                False,
            )
        )

    # A degenerate model (e.g. NaN weights after divergence) can leave an image with no finite
    # hypothesis at all: it gets an empty caption rather than a crash.
    empty = _Hypothesis(float("-inf"), 1, [], features.new_zeros(0, P), False)
    best = [
        max(hyps, key=lambda h: h.score / h.length**length_penalty) if hyps else empty
        for hyps in finished
    ]
    return DecodeResult(
        tokens=[h.tokens for h in best],
        alphas=[h.alphas for h in best],
        scores=torch.tensor([h.score for h in best], device=device),
        ended=torch.tensor([h.ended for h in best], device=device),
    )


def decode(
    decoder: AttentionLSTMDecoder,
    features: torch.Tensor,
    beam_size: int = 1,
    max_len: int = 20,
    length_penalty: float = 1.0,
) -> DecodeResult:
    """Greedy for ``beam_size == 1``, beam search otherwise. features (B, P, C)."""
    if beam_size == 1:
        return greedy_decode(decoder, features, max_len=max_len)
    return beam_search(
        decoder, features, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty
    )
