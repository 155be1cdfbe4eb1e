"""Caption decoding: greedy, batched beam search and sampling. The one implementation every
caller uses (validation, test, ``evaluate.py``, ``caption.py``, self-critical training).

They use the decoder contract alone (:mod:`imgcap.decoders.contract`): ``init_state``, ``step``,
``state.select`` and ``vocab_size``, so they work for every decoder. Greedy and beam search run
under ``torch.no_grad``; sampling keeps gradients (the policy gradient needs them). Putting the
decoder in eval mode (dropout off) is the caller's job.

Conventions: decoding starts from ``<start>``; at most ``max_len`` tokens are generated, counting
``<end>``. A caption that never emits ``<end>`` is cut at ``max_len`` words. Returned tokens
exclude ``<start>`` and ``<end>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imgcap.decoders.contract import CaptionDecoder, repeat_rows
from imgcap.errors import ConfigError
from imgcap.settings import check_beam_size
from imgcap.tokens import END_ID, PAD_ID, START_ID


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
    check_beam_size(beam_size)


@torch.no_grad()
def greedy_decode(
    decoder: CaptionDecoder, features: torch.Tensor, max_len: int = 20
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
    decoder: CaptionDecoder,
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
    # per-image work (W_e e, cross-attention keys) is done once, then shared by the k beams
    state = decoder.init_state(features).select(repeat_rows(B, k, device))  # B * k rows
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
            # One host copy per step for all hypotheses that ended, not one per hypothesis.
            where = ended.nonzero()  # (E, 2): image, beam
            rows = where[:, 0] * k + where[:, 1]
            ended_scores = top_scores[where[:, 0], where[:, 1]].tolist()
            ended_tokens = hist_tokens[rows, :-1].tolist()
            for e, (b, j) in enumerate(where.tolist()):
                finished[b].append(
                    _Hypothesis(
                        ended_scores[e], t + 1, ended_tokens[e], hist_alphas[b * k + j, :-1], True
                    )
                )
            live = live - ended.sum(1)
        scores = top_scores.masked_fill(ended, float("-inf"))
        # a beam's source is a beam of the same image: per-image memory stays as it is
        state = state.select(src_row.view(B, k))
        prev = tok.view(-1)
        if not bool((live > 0).any()):
            break

    # hypotheses cut at max_len without <end> compete with the finished ones
    where = torch.isfinite(scores).nonzero()  # (E, 2): image, beam
    cut_scores = scores[where[:, 0], where[:, 1]].tolist()
    cut_tokens = hist_tokens[where[:, 0] * k + where[:, 1]].tolist()
    for e, (b, j) in enumerate(where.tolist()):
        finished[b].append(
            _Hypothesis(
                cut_scores[e], hist_tokens.shape[1], cut_tokens[e], hist_alphas[b * k + j], False
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


@dataclass
class SampleResult:
    """n sampled captions for each of B images: N = B * n rows, image-major.

    tokens: (N, L) long, the sampled words including ``<end>`` when drawn, ``<pad>`` after it.
    log_probs: (N, L) log-probability of each sampled token under the decoder, with gradients
        (the policy gradient flows through them), 0 where ``mask`` is False.
    mask: (N, L) bool, True for the generated tokens, ``<end>`` included.
    """

    tokens: torch.Tensor
    log_probs: torch.Tensor
    mask: torch.Tensor


def sample_captions(
    decoder: CaptionDecoder,
    features: torch.Tensor,
    n: int = 5,
    max_len: int = 20,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Draw n captions per image from the decoder's distribution (multinomial at each step,
    ``<pad>`` and ``<start>`` excluded), keeping gradients. features (B, P, C)."""
    _check(max_len)
    if n < 1 or temperature <= 0:
        raise ConfigError(f"sampling needs n >= 1 and temperature > 0, got {n}, {temperature}")
    B, device = features.shape[0], features.device
    N = B * n
    state = decoder.init_state(features).select(repeat_rows(B, n, device))
    prev = torch.full((N,), START_ID, dtype=torch.long, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    tokens, log_probs, masks = [], [], []
    for _ in range(max_len):
        logits, _, state = decoder.step(prev, state)  # (N, V)
        logp = _next_log_probs(logits / temperature)  # (N, V), float32
        tok = torch.multinomial(logp.detach().exp(), 1, generator=generator).squeeze(1)  # (N,)
        live = ~done
        tokens.append(tok.masked_fill(done, PAD_ID))
        log_probs.append(logp.gather(1, tok.unsqueeze(1)).squeeze(1) * live)
        masks.append(live)
        done = done | (tok == END_ID)
        prev = tok
        if bool(done.all()):
            break
    return SampleResult(torch.stack(tokens, 1), torch.stack(log_probs, 1), torch.stack(masks, 1))


def decode(
    decoder: CaptionDecoder,
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
