"""Driving a decoder through its contract (imgcap/decoders/contract.py) in tests."""

from __future__ import annotations

import torch


def run_steps(decoder, state, tokens: torch.Tensor):
    """Feed tokens (N, t) one position at a time -> per-step logits (N, t, V), alphas (N, t, P)
    and the state after the last one."""
    logits, alphas = [], []
    for t in range(tokens.shape[1]):
        step_logits, alpha, state = decoder.step(tokens[:, t], state)
        logits.append(step_logits)
        alphas.append(alpha)
    return torch.stack(logits, 1), torch.stack(alphas, 1), state


def assert_same_decoding(a, b) -> None:
    """Two DecodeResults agree: tokens, scores, which captions ended, and every alpha."""
    assert a.tokens == b.tokens
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.ended, b.ended)
    for x, y in zip(a.alphas, b.alphas, strict=True):
        torch.testing.assert_close(x, y)
