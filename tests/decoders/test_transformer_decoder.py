"""The transformer decoder: cached steps == teacher forcing, state selection, causality, decoding
through the contract, training through the module, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from imgcap.captioning_module import CaptioningModule, load_captioner
from imgcap.checkpoint import run_config_entry
from imgcap.decoders import TransformerDecoder, beam_search, greedy_decode
from imgcap.errors import ConfigError
from imgcap.run.checks import check_train_config
from imgcap.tokens import END_ID, PAD_ID, START_ID
from tests.support.decoders import assert_same_decoding
from tests.support.decoders import run_steps as _run_steps
from tests.support.hydra_helpers import compose_train

V, C, P, MAX_LEN = 15, 24, 4, 8
SIZES = dict(d_model=16, num_layers=2, num_heads=4, ff_dim=32)


def _decoder(seed: int = 0, dtype: torch.dtype = torch.float64, **settings) -> TransformerDecoder:
    """A tiny random decoder in eval mode whose captions vary with the image, some ending with
    <end> and some cut at MAX_LEN (sharper outputs, more weight on the cross-attention)."""
    torch.manual_seed(seed)
    settings = {**SIZES, "dropout": 0.1, "tie_embeddings": False, **settings}
    dec = TransformerDecoder(V, C, **settings).to(dtype).eval()
    with torch.no_grad():
        dec.out.weight.mul_(2.0)
        dec.out.bias[END_ID] = 2.0
        for layer in dec.layers:
            layer.cross_out.weight.mul_(3.0)
    return dec


def _features(B: int = 3, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(B, P, C, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _captions(B: int = 3, T: int = 7, seed: int = 2) -> torch.Tensor:
    captions = torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(seed))
    captions[:, 0] = START_ID
    return captions


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cached_steps_equal_teacher_forcing(dtype, tol, tie):
    dec = _decoder(dtype=dtype, tie_embeddings=tie)
    feats, captions = _features(dtype=dtype), _captions()
    forced, alphas = dec(feats, captions)
    assert forced.shape == (3, 6, V) and alphas is None
    stepped, _, state = _run_steps(dec, dec.init_state(feats), captions[:, :-1])
    torch.testing.assert_close(stepped, forced, rtol=0, atol=tol)
    assert state.length == 6
    assert state.self_k[0].shape == (3, 4, 6, 4) and state.cross_k[0].shape == (3, 4, P, 4)


def test_select_continues_rows_like_their_histories_from_scratch():
    dec, feats = _decoder(), _features(B=2)
    g, t = 3, 4
    tokens = torch.randint(3, V, (2 * g, t), generator=torch.Generator().manual_seed(5))
    tokens[:, 0] = START_ID
    state = dec.init_state(feats).select(torch.tensor([[0] * g, [1] * g]))  # 3 rows per image
    _, _, state = _run_steps(dec, state, tokens)
    index = torch.tensor([[2, 0], [4, 4]])  # image 0 keeps rows 2, 0; image 1 row 4 twice
    selected = state.select(index)
    assert selected.cross_k[0] is state.cross_k[0]  # per-image memory is shared, not gathered
    assert selected.self_k[0].shape[0] == 4
    next_tokens = torch.tensor([5, 6, 7, 8])
    logits, alpha, _ = dec.step(next_tokens, selected)

    for row, (src, image) in enumerate([(2, 0), (0, 0), (4, 1), (4, 1)]):
        history = torch.cat([tokens[src], next_tokens[row : row + 1]]).unsqueeze(0)
        alone, alone_alpha, _ = _run_steps(dec, dec.init_state(feats[image : image + 1]), history)
        torch.testing.assert_close(logits[row], alone[0, -1], rtol=0, atol=1e-10)
        torch.testing.assert_close(alpha[row], alone_alpha[0, -1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_batched_beam_equals_per_image_beam(k):
    dec, feats = _decoder(dtype=torch.float32), _features(B=5, dtype=torch.float32)
    batched = beam_search(dec, feats, beam_size=k, max_len=MAX_LEN)
    alone = [beam_search(dec, feats[i : i + 1], beam_size=k, max_len=MAX_LEN) for i in range(5)]
    assert batched.tokens == [a.tokens[0] for a in alone]
    torch.testing.assert_close(
        batched.scores, torch.cat([a.scores for a in alone]), rtol=0, atol=1e-5
    )
    assert batched.ended.tolist() == [bool(a.ended[0]) for a in alone]
    assert len({tuple(t) for t in batched.tokens}) > 1, "captions should differ between images"
    assert set(batched.ended.tolist()) == {True, False}, "some captions end, some are cut"


def test_greedy_equals_beam_of_one():
    dec, feats = _decoder(dtype=torch.float32), _features(B=5, dtype=torch.float32)
    greedy = greedy_decode(dec, feats, max_len=MAX_LEN)
    beam = beam_search(dec, feats, beam_size=1, max_len=MAX_LEN)
    assert_same_decoding(greedy, beam)


def test_step_alpha_is_a_distribution_over_regions():
    dec, feats = _decoder(), _features(B=2)
    state = dec.init_state(feats).select(torch.tensor([[0, 0, 0], [1, 1, 1]]))
    for token in (START_ID, 5, 6):
        _, alpha, state = dec.step(torch.full((6,), token), state)
        assert alpha.shape == (6, P)
        assert (alpha >= 0).all()
        torch.testing.assert_close(alpha.sum(-1), torch.ones(6, dtype=alpha.dtype))


def test_later_tokens_do_not_change_earlier_logits():
    dec, feats, captions = _decoder(), _features(), _captions()
    changed = captions.clone()
    changed[:, 4] = (captions[:, 4] + 1 - 3) % (V - 3) + 3  # another word at position 4
    before, _ = dec(feats, captions)
    after, _ = dec(feats, changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=0, atol=0)
    assert not torch.allclose(after[:, 4:], before[:, 4:])


def test_scheduled_sampling_and_positions_past_max_len_are_config_errors():
    dec, feats, captions = _decoder(max_len=6), _features(), _captions(T=7)
    with pytest.raises(ConfigError, match="teacher_forcing_ratio=1.0"):
        dec(feats, captions, teacher_forcing_ratio=0.9)
    with pytest.raises(ConfigError, match="model.decoder.max_len=6"):
        dec(feats, _captions(T=8))
    dec(feats, captions)  # 6 input positions fit
    with pytest.raises(ConfigError, match="model.decoder.num_heads"):
        TransformerDecoder(V, C, d_model=18, num_heads=4)


def test_trains_through_the_module_and_round_trips_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    words = ["<pad>", "<start>", "<end>", "<unk>", "red", "blue", "circle", "square"]
    model = CaptioningModule(
        vocab=words,
        encoder={"arch": "small_cnn", "weights": None, "fine_tune": "all", "width": 16, "lr": 3e-3},
        decoder={"name": "transformer", **SIZES, "dropout": 0.0, "max_len": 12},
        encoded_size=2,
        max_len=12,  # decoding may not go past the decoder's 12 positions
        meteor=False,
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
    )
    images = torch.rand(4, 3, 32, 32)
    s, e, p = START_ID, END_ID, PAD_ID
    captions = torch.tensor([[s, 4, 6, e, p], [s, 5, 7, e, p], [s, 4, 7, e, p], [s, 5, 6, 4, e]])
    lengths = (captions != PAD_ID).sum(1)
    optimizer = model.optimizer_factory(model.parameters())
    model.train()
    losses = []
    for _ in range(15):
        loss = model.compute_loss(model.encoder(images), captions, lengths, ratio=1.0)
        assert loss["att_reg"].item() == 0.0  # no per-step attention to regularise
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append(loss["xe"].item())
    assert losses[-1] < 0.5 * losses[0], losses

    # the checkpoint holds plain values only: it loads with weights_only and rebuilds the model
    model.eval()
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "imgcap": run_config_entry({"model": {"decoder": dict(model.hparams.decoder)}}),
    }
    model.on_save_checkpoint(checkpoint)
    path = tmp_path / "transformer.ckpt"
    torch.save(checkpoint, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["hyper_parameters"]["decoder"] == {
        "name": "transformer",
        **SIZES,
        "dropout": 0.0,
        "max_len": 12,
    }
    again, _ = load_captioner(path)
    assert isinstance(again.decoder, TransformerDecoder)
    with torch.no_grad():
        features = model.encoder(images)
        torch.testing.assert_close(again.encoder(images), features)
        torch.testing.assert_close(
            again.decoder(features, captions)[0], model.decoder(features, captions)[0]
        )
    assert again.caption_features(features)[0] == model.caption_features(features)[0]
    assert (
        again.caption_features(features, beam_size=3)[0]
        == model.caption_features(features, beam_size=3)[0]
    )

    # caption.py attention=true: maps from the last layer's cross-attention, one per word
    from PIL import Image

    from imgcap.api.captioner import Captioner

    captioner = Captioner(again, image_size=32)
    (result,) = captioner([Image.new("RGB", (40, 32), "red")], attention=True)
    assert result.attention.shape == (len(result.words), 2, 2)
    assert torch.allclose(result.attention.sum((1, 2)), torch.ones(len(result.words)), atol=1e-5)


@pytest.mark.parametrize(
    "experiment, d_model", [("demo", 128), ("flickr8k", 512)], ids=["demo", "flickr8k"]
)
def test_config_picks_the_transformer_with_the_experiments_sizes(experiment, d_model, tmp_path):
    cfg = compose_train(
        tmp_path,
        [f"experiment={experiment}", "model/decoder=transformer", "model.encoder.weights=null"],
    )
    check_train_config(cfg)
    assert cfg.model.decoder.name == "transformer" and cfg.model.decoder.d_model == d_model
    if experiment == "demo":  # building the flickr8k model (a ResNet-50) is slow for a unit test
        model = instantiate(cfg.model, vocab=["<pad>", "<start>", "<end>", "<unk>", "a"])
        assert isinstance(model.decoder, TransformerDecoder)
        assert model.decoder.d_model == d_model and len(model.decoder.layers) == 2
