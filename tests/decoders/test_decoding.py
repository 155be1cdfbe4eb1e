"""Decoding: greedy == beam of 1, batched beam == a plain per-image reference beam, caching."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from imgcap.decoders import (
    AttentionLSTMDecoder,
    TransformerDecoder,
    beam_search,
    decode,
    greedy_decode,
)
from imgcap.errors import ConfigError
from imgcap.vocab import END_ID, PAD_ID, START_ID
from tests.support.decoders import assert_same_decoding

V, C, P, MAX_LEN = 15, 24, 5, 8


def _decoder(end_bias: float = 0.0, seed: int = 0) -> AttentionLSTMDecoder:
    """A small random decoder with peaked outputs (so captions vary), <end> made likelier
    or rarer through its output bias."""
    torch.manual_seed(seed)
    dec = AttentionLSTMDecoder(V, C, embed_dim=16, decoder_dim=20, attention_dim=12).eval()
    with torch.no_grad():
        # larger embeddings and recurrent weights keep a random LSTM from settling into
        # repeating one word, so captions vary in content and length
        dec.embedding.weight.normal_(0, 1.0)
        dec.lstm.weight_hh.mul_(3.0)
        dec.out.weight.mul_(3.0)
        dec.out.bias[END_ID] = end_bias
    return dec


def _transformer(end_bias: float = 0.0, seed: int = 0) -> TransformerDecoder:
    """A small random transformer decoder with sharpened outputs and more weight on the image
    (so captions vary), <end> made likelier or rarer through its output bias."""
    torch.manual_seed(seed)
    dec = TransformerDecoder(
        V, C, d_model=16, num_layers=2, num_heads=4, ff_dim=32, tie_embeddings=False
    ).eval()
    with torch.no_grad():
        dec.out.weight.mul_(2.0)
        dec.out.bias[END_ID] = 2.0 + end_bias
        for layer in dec.layers:
            layer.cross_out.weight.mul_(3.0)
    return dec


MAKE_DECODER = {"lstm_attention": _decoder, "transformer": _transformer}


def _features(B: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, P, C, generator=torch.Generator().manual_seed(seed)) * 2


# ---- reference beam search: one image, one hypothesis at a time, no batching -----------------


@dataclass
class _Ref:
    tokens: list[int]
    score: float
    ended: bool
    n_ended_early: int  # hypotheses that emitted <end> before max_len
    n_cut: int  # hypotheses that reached max_len without <end>


def _reference_beam(dec, feats, k, max_len, length_penalty) -> _Ref:
    """Keep the k - (number finished) best continuations each step; a continuation ending in
    <end> is finished; live ones at max_len are finished too; best by score / len**penalty."""
    live = [([], torch.zeros(()), dec.init_state(feats.unsqueeze(0)))]  # (tokens, score, state)
    finished = []  # (score, length, words, ended)
    for _ in range(max_len):
        candidates = []
        for tokens, score, state in live:
            prev = torch.tensor([tokens[-1] if tokens else START_ID])
            logits, _, new_state = dec.step(prev, state)
            logits = logits[0].float()
            logits[[PAD_ID, START_ID]] = float("-inf")  # never generated
            logp = score + logits.log_softmax(-1)  # (V,) float32, like the batch
            for v in range(V):
                if v in (PAD_ID, START_ID):
                    continue
                candidates.append((logp[v], tokens + [v], new_state))
        candidates.sort(key=lambda c: -float(c[0]))
        live = []
        for score, tokens, state in candidates[: k - len(finished)]:
            if tokens[-1] == END_ID:
                finished.append((float(score), len(tokens), tokens[:-1], True))
            else:
                live.append((tokens, score, state))
        if not live:
            break
    n_ended = len(finished)
    finished += [(float(s), len(t), t, False) for t, s, _ in live]
    best = max(finished, key=lambda h: h[0] / h[1] ** length_penalty)
    return _Ref(best[2], best[0], best[3], n_ended, len(live))


@torch.no_grad()
def _reference_batch(dec, feats, k, max_len, length_penalty=1.0) -> list[_Ref]:
    return [_reference_beam(dec, f, k, max_len, length_penalty) for f in feats]


# ---- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("end_bias", [-3.0, 0.0, 3.0])
def test_greedy_equals_beam_of_one(end_bias):
    dec, feats = _decoder(end_bias), _features()
    greedy = greedy_decode(dec, feats, max_len=MAX_LEN)
    beam = beam_search(dec, feats, beam_size=1, max_len=MAX_LEN)
    assert_same_decoding(greedy, beam)


def test_greedy_covers_both_endings_and_shapes():
    dec, feats = _decoder(end_bias=0.0), _features(B=8)
    out = greedy_decode(dec, feats, max_len=MAX_LEN)
    assert out.ended.any() and not out.ended.all()
    assert out.scores.shape == (8,) and not out.scores.requires_grad
    for tokens, alphas, ended in zip(out.tokens, out.alphas, out.ended, strict=True):
        assert START_ID not in tokens and END_ID not in tokens
        assert alphas.shape == (len(tokens), P)
        torch.testing.assert_close(alphas.sum(-1), torch.ones(len(tokens)))
        assert ended or len(tokens) == MAX_LEN


def _mixed_batch_setup(k: int, make_decoder=_decoder):
    """Find an <end> bias where, in the reference, some hypotheses end early, some are cut at
    max_len, and the chosen captions include both kinds."""
    feats = _features()
    for end_bias in (0.0, 0.25, -0.25, 0.5, -0.5):
        dec = make_decoder(end_bias)
        ref = _reference_batch(dec, feats, k, MAX_LEN)
        ended = {r.ended for r in ref}
        if (
            sum(r.n_ended_early for r in ref)
            and sum(r.n_cut for r in ref)
            and ended == {True, False}
        ):
            return dec, feats, ref
    pytest.fail("no <end> bias gave a batch with both early ends and max_len cuts")


@pytest.mark.parametrize("decoder", sorted(MAKE_DECODER))
@pytest.mark.parametrize("k", [1, 3, 5])
def test_batched_beam_equals_per_image_reference(k, decoder):
    dec, feats, ref = _mixed_batch_setup(k, MAKE_DECODER[decoder])
    out = beam_search(dec, feats, beam_size=k, max_len=MAX_LEN, length_penalty=1.0)
    assert out.tokens == [r.tokens for r in ref]
    torch.testing.assert_close(out.scores, torch.tensor([r.score for r in ref]), rtol=0, atol=1e-4)
    assert out.ended.tolist() == [r.ended for r in ref]
    for tokens, alphas in zip(out.tokens, out.alphas, strict=True):
        assert alphas.shape == (len(tokens), P)


def test_length_penalty_changes_the_choice_like_the_reference():
    dec, feats, _ = _mixed_batch_setup(3)
    results = {}
    for penalty in (0.0, 2.0):
        out = beam_search(dec, feats, beam_size=3, max_len=MAX_LEN, length_penalty=penalty)
        ref = _reference_batch(dec, feats, 3, MAX_LEN, length_penalty=penalty)
        assert out.tokens == [r.tokens for r in ref]
        results[penalty] = out
    # raw log-probability prefers shorter captions than a strong length normalisation
    short = sum(map(len, results[0.0].tokens))
    long = sum(map(len, results[2.0].tokens))
    assert short < long


def test_beam_never_scores_below_greedy_under_raw_log_prob():
    dec, feats = _decoder(1.0), _features()
    greedy = greedy_decode(dec, feats, max_len=MAX_LEN)
    beam = beam_search(dec, feats, beam_size=4, max_len=MAX_LEN, length_penalty=0.0)
    assert (beam.scores >= greedy.scores - 1e-5).all()


@pytest.mark.parametrize("beam_size", [1, 3])
def test_projection_cache_gives_identical_decoding(beam_size):
    dec, feats = _decoder(1.0), _features()
    cached = decode(dec, feats, beam_size=beam_size, max_len=MAX_LEN)
    dec.precompute_projection = False
    recomputed = decode(dec, feats, beam_size=beam_size, max_len=MAX_LEN)
    assert cached.tokens == recomputed.tokens
    torch.testing.assert_close(cached.scores, recomputed.scores, rtol=0, atol=1e-6)
    for a, b in zip(cached.alphas, recomputed.alphas, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_decode_dispatches_and_validates():
    dec, feats = _decoder(1.0), _features(B=3)
    assert decode(dec, feats, beam_size=1, max_len=5).tokens == greedy_decode(dec, feats, 5).tokens
    assert decode(dec, feats, beam_size=3, max_len=5).tokens == beam_search(dec, feats, 3, 5).tokens
    with pytest.raises(ConfigError, match="beam_size"):
        decode(dec, feats, beam_size=0)
    with pytest.raises(ConfigError, match="max_len"):
        decode(dec, feats, max_len=0)
