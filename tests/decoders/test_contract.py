"""Every registered decoder keeps the decoder contract (imgcap/decoders/contract.py): the shapes
of ``init_state`` and ``step``, teacher forcing equal to stepping, ``state.select`` for beam
search and sampling, batched beam search and sampling through the contract alone.

The tests are parametrised over the registry, so a decoder registered later is checked too
(with its default sizes unless ``SMALL`` names smaller ones)."""

from __future__ import annotations

import pytest
import torch

from imgcap.decoders import beam_search, build_decoder, greedy_decode, sample_captions
from imgcap.decoders.contract import CaptionDecoder, DecoderState, repeat_rows
from imgcap.decoders.registry import DECODERS
from imgcap.errors import ConfigError
from imgcap.tokens import END_ID, PAD_ID, START_ID
from tests.support.decoders import run_steps

V, C, P, B, MAX_LEN = 13, 12, 4, 3, 6

# Small sizes, so that the contract is cheap to check; a decoder missing here gets its defaults.
SMALL = {
    "lstm_attention": dict(embed_dim=16, decoder_dim=16, attention_dim=8),
    "transformer": dict(d_model=16, num_layers=2, num_heads=4, ff_dim=32),
}


def _build(name: str, seed: int = 0) -> torch.nn.Module:
    """The registered decoder ``name`` in float64 (exact comparisons) and eval mode (no
    dropout), its output layer sharpened so that captions differ between images and rows."""
    torch.manual_seed(seed)
    decoder = build_decoder({"name": name, **SMALL.get(name, {})}, vocab_size=V, encoder_dim=C)
    decoder = decoder.double().eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.mul_(2.0)
    return decoder


@pytest.fixture(params=DECODERS.names())
def decoder(request) -> torch.nn.Module:
    return _build(request.param)


def _features(batch: int = B, seed: int = 1) -> torch.Tensor:
    """(batch, P, C) float64 encoder features."""
    return torch.randn(batch, P, C, generator=torch.Generator().manual_seed(seed)).double()


def _captions() -> tuple[torch.Tensor, torch.Tensor]:
    """Training captions (B, T) ``[<start> w.. <end> <pad>..]`` of different lengths, and their
    lengths (B,) counting <start> and <end>."""
    lengths = torch.tensor([7, 4, 5])
    T = int(lengths.max())
    words = torch.randint(4, V, (B, T), generator=torch.Generator().manual_seed(2))
    captions = torch.full((B, T), PAD_ID)
    for i, n in enumerate(lengths.tolist()):
        captions[i, 0] = START_ID
        captions[i, 1 : n - 1] = words[i, 1 : n - 1]
        captions[i, n - 1] = END_ID
    return captions, lengths


def test_the_registry_holds_the_built_in_decoders():
    assert {"lstm_attention", "transformer"} <= set(DECODERS.names())


def test_decoder_and_state_have_the_contracts_members(decoder):
    assert isinstance(decoder, CaptionDecoder)
    assert decoder.vocab_size == V
    state = decoder.init_state(_features())
    assert isinstance(state, DecoderState)


def test_one_step_from_the_initial_state_gives_one_row_per_image(decoder):
    state = decoder.init_state(_features())
    prev = torch.full((B,), START_ID)
    logits, alpha, state = decoder.step(prev, state)
    assert logits.shape == (B, V)
    assert alpha.shape == (B, P)
    assert torch.isfinite(logits).all()
    # Any non-negative map summing to 1 over the regions.
    assert (alpha >= 0).all()
    assert alpha.sum(-1).sub(1).abs().max() < 1e-9
    assert isinstance(state, DecoderState)
    logits, alpha, _ = decoder.step(logits.argmax(-1), state)  # and the next step too
    assert logits.shape == (B, V) and alpha.shape == (B, P)


def test_steps_depend_on_the_image(decoder):
    """Two images, same previous words: different logits (the features are read)."""
    state = decoder.init_state(_features())
    logits, _, _ = run_steps(decoder, state, torch.full((B, 3), START_ID))
    assert (logits[0] - logits[1]).abs().max() > 1e-6


def test_teacher_forcing_equals_stepping_through_the_caption(decoder):
    features = _features()
    captions, lengths = _captions()
    logits, alphas = decoder(features, captions, lengths)
    T = captions.shape[1]
    assert logits.shape == (B, T - 1, V)
    assert alphas is None or alphas.shape == (B, T - 1, P)
    stepped, stepped_alphas, _ = run_steps(decoder, decoder.init_state(features), captions[:, :-1])
    for i, n in enumerate(lengths.tolist()):
        # Positions past a caption's length are padding targets: the contract leaves them free.
        assert torch.allclose(logits[i, : n - 1], stepped[i, : n - 1], atol=1e-9, rtol=0), i
        if alphas is not None:
            valid = alphas[i, : n - 1]
            assert (valid >= 0).all() and valid.sum(-1).sub(1).abs().max() < 1e-9


def test_teacher_forcing_without_lengths_runs_every_position(decoder):
    features = _features()
    captions, _ = _captions()
    logits, _ = decoder(features, captions)
    stepped, _, _ = run_steps(decoder, decoder.init_state(features), captions[:, :-1])
    assert torch.allclose(logits, stepped, atol=1e-9, rtol=0)


def test_scheduled_sampling_is_honoured_or_refused(decoder):
    features = _features()
    captions, lengths = _captions()
    generator = torch.Generator().manual_seed(3)
    if getattr(decoder, "supports_scheduled_sampling", False):
        logits, _ = decoder(features, captions, lengths, 0.5, generator)
        assert logits.shape == (B, captions.shape[1] - 1, V)
    else:
        with pytest.raises(ConfigError):
            decoder(features, captions, lengths, 0.5, generator)


def test_max_len_when_declared_is_a_positive_int(decoder):
    if hasattr(decoder, "max_len"):
        assert isinstance(decoder.max_len, int) and decoder.max_len >= 1


def test_select_repeats_each_images_row(decoder):
    """``select(repeat_rows(B, m))``: m copies of each image's row, image-major."""
    m = 3
    state = decoder.init_state(_features())
    prev = torch.full((B,), START_ID)
    single, _, _ = decoder.step(prev, state)  # (B, V)
    repeated, alpha, _ = decoder.step(
        prev.repeat_interleave(m), state.select(repeat_rows(B, m, "cpu"))
    )
    assert repeated.shape == (B * m, V) and alpha.shape == (B * m, P)
    assert torch.allclose(repeated, single.repeat_interleave(m, 0), atol=1e-9, rtol=0)


def test_select_reorders_and_duplicates_rows_within_each_image(decoder):
    """After rows diverge, selecting rows (as beam search does: any rows of the same image, a
    row twice) continues exactly those rows' histories."""
    m = 3
    state = decoder.init_state(_features()).select(repeat_rows(B, m, "cpu"))
    history = torch.randint(4, V, (B * m, 3), generator=torch.Generator().manual_seed(4))
    history[:, 0] = START_ID
    _, _, state = run_steps(decoder, state, history)  # each row has its own history now
    base = torch.arange(B).unsqueeze(1) * m  # (B, 1) first row of each image
    index = base + torch.tensor([[2, 0, 0], [1, 2, 1], [0, 0, 2]])  # (B, m) rows of the same image
    following = torch.randint(4, V, (B * m, 2), generator=torch.Generator().manual_seed(5))

    chosen = index.reshape(-1)
    selected, selected_alphas, _ = run_steps(decoder, state.select(index), following[chosen])
    direct, direct_alphas, _ = run_steps(decoder, state, following)
    assert torch.allclose(selected, direct[chosen], atol=1e-9, rtol=0)
    assert torch.allclose(selected_alphas, direct_alphas[chosen], atol=1e-9, rtol=0)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_beam_search_returns_valid_words_and_equals_each_image_alone(decoder, beam_size):
    features = _features(batch=4)
    result = beam_search(decoder, features, beam_size=beam_size, max_len=MAX_LEN)
    assert len(result.tokens) == len(result.alphas) == 4
    assert result.scores.shape == (4,) and result.ended.shape == (4,)
    assert torch.isfinite(result.scores).all() and (result.scores <= 0).all()
    for tokens, alphas in zip(result.tokens, result.alphas, strict=True):
        assert len(tokens) <= MAX_LEN
        assert all(isinstance(t, int) and 0 <= t < V for t in tokens)
        assert not {PAD_ID, START_ID, END_ID} & set(tokens)
        assert alphas.shape == (len(tokens), P)
    # Rows of one image never mix with another's: each image alone gives the same caption.
    for i in range(4):
        alone = beam_search(decoder, features[i : i + 1], beam_size=beam_size, max_len=MAX_LEN)
        assert alone.tokens[0] == result.tokens[i]
        assert alone.scores[0].item() == pytest.approx(result.scores[i].item(), abs=1e-9)
    if beam_size == 1:
        assert greedy_decode(decoder, features, max_len=MAX_LEN).tokens == result.tokens


def test_sampling_draws_n_captions_per_image_with_gradients(decoder):
    decoder.train()  # as in self-critical training
    n = 2
    features = _features()
    result = sample_captions(
        decoder, features, n=n, max_len=MAX_LEN, generator=torch.Generator().manual_seed(6)
    )
    N, L = result.tokens.shape
    assert N == B * n and 1 <= L <= MAX_LEN
    assert result.log_probs.shape == result.mask.shape == (N, L)
    assert ((result.tokens >= 0) & (result.tokens < V)).all()
    assert not torch.isin(result.tokens[result.mask], torch.tensor([PAD_ID, START_ID])).any()
    assert (result.log_probs[~result.mask] == 0).all()
    assert (result.log_probs[result.mask] <= 0).all()
    assert result.log_probs.requires_grad
    result.log_probs.sum().backward()
    grads = [p.grad for p in decoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
