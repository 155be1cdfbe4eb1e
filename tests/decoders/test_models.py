"""Unit tests of the networks: encoder, attention, decoder (shapes, freezing, weights, teacher forcing)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgcap.decoders import AdditiveAttention, AttentionLSTMDecoder
from imgcap.encoders import build_encoder
from imgcap.errors import ConfigError
from imgcap.vocab import END_ID, PAD_ID, START_ID

# ---- encoder ---------------------------------------------------------------------------------


def _bn_training_flags(module: nn.Module) -> list[bool]:
    return [m.training for m in module.modules() if isinstance(m, _BatchNorm)]


def test_resnet18_encoder_shapes_at_64px():
    enc = build_encoder("resnet18", weights=None, encoded_size=3)
    out = enc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 9, 512)
    assert enc.out_dim == 512 and enc.num_pixels == 9


def test_small_cnn_shapes_and_width():
    enc = build_encoder("small_cnn", encoded_size=4, fine_tune="all", width=48)
    out = enc(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 16, 48)
    assert enc.out_dim == 48
    assert not enc.is_frozen
    assert enc.config == {"arch": "small_cnn", "weights": None, "encoded_size": 4, "width": 48}


def test_grid_cells_are_row_major():
    enc = build_encoder("small_cnn", encoded_size=2, width=8).eval()
    x = torch.randn(1, 3, 32, 32)
    grid = enc.pool(enc.backbone(x))  # (1, C, 2, 2)
    out = enc(x)  # (1, 4, C)
    torch.testing.assert_close(out[0, 1], grid[0, :, 0, 1])  # row 0, column 1
    torch.testing.assert_close(out[0, 2], grid[0, :, 1, 0])


def test_frozen_encoder_has_no_grads_and_bn_stays_in_eval():
    enc = build_encoder("resnet18", encoded_size=2, fine_tune="frozen")
    assert enc.is_frozen
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.trainable_parameters() == []
    enc.train()
    assert enc.training
    flags = _bn_training_flags(enc)
    assert flags and not any(flags)
    # running statistics must not move in train mode
    before = enc.backbone.bn1.running_mean.clone()
    enc(torch.randn(2, 3, 64, 64) * 3 + 1)
    torch.testing.assert_close(enc.backbone.bn1.running_mean, before)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fine_tune_last_k_stages(k):
    enc = build_encoder("resnet18", encoded_size=2, fine_tune=k).train()
    trainable = {f"layer{i}" for i in range(5 - k, 5)}
    assert not enc.is_frozen
    for name, child in enc.backbone.named_children():
        grads = {p.requires_grad for p in child.parameters()}
        bn = set(_bn_training_flags(child))
        if name in trainable:
            assert grads == {True}, name
            assert bn == {True}, name
        elif grads:  # relu/maxpool have no parameters
            assert grads == {False}, name
            assert bn <= {False}, name
    n_trainable = sum(p.numel() for p in enc.trainable_parameters())
    expected = sum(p.numel() for n in trainable for p in getattr(enc.backbone, n).parameters())
    assert n_trainable == expected


def test_set_fine_tune_switches_modes():
    enc = build_encoder("resnet18", encoded_size=2).train()
    assert enc.is_frozen
    enc.set_fine_tune("all")
    assert all(p.requires_grad for p in enc.parameters())
    assert all(_bn_training_flags(enc))
    enc.set_fine_tune(1)
    assert enc.fine_tune == 1
    assert not enc.backbone.layer3[0].bn1.training and enc.backbone.layer4[0].bn1.training
    enc.set_fine_tune(0)
    assert enc.is_frozen and enc.fine_tune == "frozen"


def test_bad_fine_tune_values():
    with pytest.raises(ConfigError, match="0..4"):
        build_encoder("resnet18", fine_tune=5)
    with pytest.raises(ConfigError, match="frozen"):
        build_encoder("small_cnn", fine_tune="some")


def test_unknown_arch_lists_choices():
    with pytest.raises(ConfigError, match="resnet50.*small_cnn"):
        build_encoder("vgg16")


def test_unexpected_option_is_an_error():
    with pytest.raises(ConfigError, match="width"):
        build_encoder("resnet18", width=3)


def _reference_features(model: nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
    body = nn.Sequential(*list(model.children())[:-2])
    return nn.functional.adaptive_avg_pool2d(body(x), size).flatten(2).transpose(1, 2)


def test_local_weights_file_loads(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)  # a full torchvision state_dict, fc included
    enc = build_encoder("resnet18", weights=str(path), encoded_size=2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), _reference_features(model, x, 2))
        # a bare backbone state_dict (here: the encoder's own) loads too
        torch.save(enc.state_dict(), tmp_path / "encoder.pt")
        enc2 = build_encoder("resnet18", weights=str(tmp_path / "encoder.pt"), encoded_size=2)
        torch.testing.assert_close(enc2.eval()(x), enc(x))
    assert enc.config["weights"] == str(path)
    assert len(enc.config["weights_sha256"]) == 16
    assert enc2.config["weights_sha256"] != enc.config["weights_sha256"]


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "resnet50.pth"
    with pytest.raises(ConfigError, match=str(path)):
        build_encoder("resnet50", weights=str(path))


def test_mismatched_weights_file_names_the_path(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ConfigError, match=f"{path}.*does not match arch 'resnet34'"):
        build_encoder("resnet34", weights=str(path))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pth"):
        build_encoder("resnet18", weights=str(tmp_path / "junk.pth"))


def test_unknown_torchvision_weights_name():
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_encoder("resnet18", weights="IMAGENET9K")


def test_download_failure_is_a_config_error(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(ConfigError, match="could not be downloaded.*local .pth file path"):
        build_encoder("resnet18", weights="DEFAULT")


# ---- attention -------------------------------------------------------------------------------


def test_attention_shapes_and_normalisation():
    torch.manual_seed(0)
    att = AdditiveAttention(encoder_dim=12, decoder_dim=10, attention_dim=64)
    assert att.encoder_proj.out_features == 64 and att.decoder_proj.out_features == 64
    assert att.score.in_features == 64
    feats, h = torch.randn(3, 7, 12), torch.randn(3, 10)
    projected = att.project(feats)
    assert projected.shape == (3, 7, 64)
    context, alpha = att(projected, feats, h)
    assert context.shape == (3, 12) and alpha.shape == (3, 7)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3))
    torch.testing.assert_close(context, torch.einsum("bp,bpc->bc", alpha, feats))
    # the weights depend on h: a different state looks elsewhere
    _, alpha2 = att(projected, feats, torch.randn(3, 10))
    assert not torch.allclose(alpha, alpha2)


# ---- decoder ---------------------------------------------------------------------------------

V, C, P = 17, 24, 6


def _decoder(**kwargs) -> AttentionLSTMDecoder:
    torch.manual_seed(0)
    kwargs = {"embed_dim": 16, "decoder_dim": 20, "attention_dim": 12, **kwargs}
    return AttentionLSTMDecoder(V, C, **kwargs).eval()


def _captions(B: int = 4, T: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 3, T - 2, 5][:B])
    caps = torch.randint(4, V, (B, T), generator=g)
    caps[:, 0] = START_ID
    for i, n in enumerate(lengths.tolist()):
        caps[i, n - 1] = END_ID
        caps[i, n:] = PAD_ID
    return caps, lengths


def test_decoder_dims_reach_the_layers():
    dec = AttentionLSTMDecoder(V, C, embed_dim=8, decoder_dim=10, attention_dim=64, dropout=0.3)
    assert dec.attention_dim == 64 and dec.attention.encoder_proj.out_features == 64
    assert dec.embedding.embedding_dim == 8 and dec.lstm.hidden_size == 10
    assert dec.dropout == 0.3 and dec.drop.p == 0.3
    assert dec.embedding.padding_idx == PAD_ID


@pytest.mark.parametrize("deep_output", [False, True])
def test_decoder_forward_shapes_and_padding(deep_output):
    dec = _decoder(deep_output=deep_output)
    feats = torch.randn(4, P, C)
    caps, lengths = _captions()
    logits, alphas = dec(feats, caps, lengths)
    assert logits.shape == (4, 7, V) and alphas.shape == (4, 7, P)
    steps = lengths - 1
    active = torch.arange(7).unsqueeze(0) < steps.unsqueeze(1)  # (B, T-1)
    torch.testing.assert_close(alphas.sum(-1)[active], torch.ones(int(active.sum())))
    assert (alphas[~active] == 0).all() and (logits[~active] == 0).all()
    # without lengths every step runs; active positions agree with the length-skipping path
    full_logits, full_alphas = dec(feats, caps)
    torch.testing.assert_close(full_logits[active], logits[active])
    torch.testing.assert_close(full_alphas[active], alphas[active])


def test_gate_values_in_open_unit_interval():
    dec = _decoder()
    gate = dec.gate(torch.randn(5, 20))
    assert gate.shape == (5, C)
    assert ((gate > 0) & (gate < 1)).all()


def _step_loop(dec, feats, inputs):
    """Reference: teacher forcing written as a plain loop over dec.step."""
    state = dec.init_state(feats)
    logits = []
    for t in range(inputs.shape[1]):
        out, _, state = dec.step(inputs[:, t], state)
        logits.append(out)
    return torch.stack(logits, 1)


@pytest.mark.parametrize("deep_output", [False, True])
def test_ratio_one_equals_step_by_step_teacher_forcing(deep_output):
    dec = _decoder(deep_output=deep_output)
    feats = torch.randn(4, P, C)
    caps, _ = _captions()
    logits, _ = dec(feats, caps, teacher_forcing_ratio=1.0)
    torch.testing.assert_close(logits, _step_loop(dec, feats, caps[:, :-1]))


def test_ratio_one_reads_ground_truth_and_ratio_zero_ignores_it():
    dec = _decoder()
    feats = torch.randn(4, P, C)
    caps, _ = _captions()
    changed = caps.clone()
    changed[:, 3] = (changed[:, 3] + 1 - 4) % (V - 4) + 4  # a different real word at input 3

    tf, _ = dec(feats, caps, teacher_forcing_ratio=1.0)
    tf2, _ = dec(feats, changed, teacher_forcing_ratio=1.0)
    torch.testing.assert_close(tf[:, :3], tf2[:, :3])  # steps before the change
    assert not torch.allclose(tf[:, 3], tf2[:, 3])  # step 3 reads input word 3

    free, _ = dec(feats, caps, teacher_forcing_ratio=0.0)
    everything_changed = caps.clone()
    everything_changed[:, 1:] = torch.randint(4, V, everything_changed[:, 1:].shape)
    free2, _ = dec(feats, everything_changed, teacher_forcing_ratio=0.0)
    torch.testing.assert_close(free, free2)  # only <start> is read
    assert not torch.allclose(free[:, 1:], tf[:, 1:])
    # and what it feeds is its own argmax: the step loop on predicted inputs gives the same
    inputs = torch.cat([caps[:, :1], free[:, :-1].argmax(-1)], dim=1)
    torch.testing.assert_close(free, _step_loop(dec, feats, inputs))


def test_scheduled_sampling_mixes_per_sequence_and_is_seeded():
    dec = _decoder()
    feats = torch.randn(4, P, C)
    caps, _ = _captions()
    tf, _ = dec(feats, caps)
    free, _ = dec(feats, caps, teacher_forcing_ratio=0.0)
    runs = [
        dec(feats, caps, teacher_forcing_ratio=0.5, generator=torch.Generator().manual_seed(s))[0]
        for s in (3, 3, 4)
    ]
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    for r in runs:
        torch.testing.assert_close(r[:, 0], tf[:, 0])  # step 0 always reads <start>
        assert not torch.allclose(r, tf) and not torch.allclose(r, free)


def test_projection_precompute_gives_same_logits():
    dec = _decoder()
    feats = torch.randn(4, P, C)
    caps, lengths = _captions()
    cached, a1 = dec(feats, caps, lengths)
    dec.precompute_projection = False
    assert dec.init_state(feats).projected is None
    recomputed, a2 = dec(feats, caps, lengths)
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=1e-6)
    torch.testing.assert_close(a1, a2, rtol=0, atol=1e-6)


def test_training_gradients_reach_every_layer_and_skip_padding():
    dec = _decoder(deep_output=True, dropout=0.0).train()
    feats = torch.randn(4, P, C, requires_grad=True)
    caps, lengths = _captions()
    logits, alphas = dec(feats, caps, lengths)
    targets = caps[:, 1:]
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1), ignore_index=PAD_ID
    )
    loss = loss + ((1 - alphas.sum(1)) ** 2).mean()
    loss.backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats.grad is not None
    assert (dec.embedding.weight.grad[PAD_ID] == 0).all()


def test_cache_key_tells_random_inits_apart():
    torch.manual_seed(0)
    a = build_encoder("small_cnn", weights=None, encoded_size=2)
    torch.manual_seed(1)
    b = build_encoder("small_cnn", weights=None, encoded_size=2)
    assert a.config == b.config
    assert a.cache_key() != b.cache_key()
    assert a.cache_key() == a.cache_key()  # stable for the same weights
