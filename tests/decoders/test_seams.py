"""The seams: a decoder written against the contract alone trains, decodes and checkpoints;
decoders and objectives are picked by name; old checkpoints still load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from imgcap.captioning_module import CaptioningModule, load_captioner
from imgcap.checkpoint import CHECKPOINT_KEY, read_checkpoint
from imgcap.decoders import AttentionLSTMDecoder, beam_search, build_decoder, sample_captions
from imgcap.decoders.contract import CaptionDecoder, gather_rows, repeat_rows
from imgcap.errors import CheckpointError, ConfigError
from imgcap.objectives import build_objective
from imgcap.tokens import END_ID, PAD_ID, START_ID
from tests.support.trainers import quiet_cpu_trainer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "blue", "circle", "square"]


# ---- a decoder written against the contract alone, known to no other module --------------------


@dataclass
class ToyState:
    h: torch.Tensor  # (N, D) per row
    keys: torch.Tensor  # (B, P, D) per image, shared by its rows

    def select(self, index: torch.Tensor) -> ToyState:
        return ToyState(gather_rows(self.h, index), self.keys)


class ToyDecoder(nn.Module):
    """h' = tanh(W [emb(y); h; attended keys]); dot-product attention over the regions."""

    def __init__(self, vocab_size: int, encoder_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, hidden)
        self.keys = nn.Linear(encoder_dim, hidden)
        self.cell = nn.Linear(3 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def init_state(self, features: torch.Tensor) -> ToyState:
        keys = self.keys(features)  # (B, P, D)
        return ToyState(keys.mean(1), keys)

    def step(self, prev_tokens, state):
        B, P, D = state.keys.shape
        g = state.h.shape[0] // B
        scores = torch.bmm(state.h.view(B, g, D), state.keys.transpose(1, 2))  # (B, g, P)
        alpha = scores.softmax(-1)
        context = torch.bmm(alpha, state.keys).reshape(B * g, D)
        x = torch.cat([self.embed(prev_tokens), state.h, context], dim=1)
        h = torch.tanh(self.cell(x))
        return self.out(h), alpha.reshape(B * g, P), ToyState(h, state.keys)

    def forward(self, features, captions, lengths=None, teacher_forcing_ratio=1.0, generator=None):
        state, logits = self.init_state(features), []
        for t in range(captions.shape[1] - 1):
            step_logits, _, state = self.step(captions[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, 1), None


def _toy_module(**overrides) -> CaptioningModule:
    settings = dict(
        vocab=WORDS,
        encoder={"arch": "small_cnn", "weights": None, "fine_tune": "all", "width": 8},
        decoder={"name": "tests.decoders.test_seams:ToyDecoder", "hidden": 24},
        encoded_size=2,
        meteor=False,
        max_len=6,
        optimizer=partial(torch.optim.Adam, lr=1e-2),
    )
    settings.update(overrides)
    return CaptioningModule(**settings)


def _feature_batches(n_batches: int = 4, B: int = 8, C: int = 8, seed: int = 0):
    """Cached-feature training batches: the caption says 'a red circle' or 'a blue square',
    which the features give away (their sign)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        which = torch.randint(0, 2, (B,), generator=g)
        features = torch.randn(B, 4, C, generator=g) * 0.1 + (which * 2 - 1).view(B, 1, 1).float()
        words = torch.tensor([[4, 5, 7], [4, 6, 8]])[which]  # (B, 3)
        captions = torch.cat(
            [torch.full((B, 1), START_ID), words, torch.full((B, 1), END_ID)], dim=1
        )
        references = [["a red circle"] if w == 0 else ["a blue square"] for w in which.tolist()]
        batches.append(
            {
                "features": features,
                "captions": captions,
                "lengths": torch.full((B,), 5),
                "references": references,
                "image_ids": [str(i) for i in range(B)],
            }
        )
    return batches


def test_a_decoder_written_against_the_contract_alone_trains_decodes_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = _toy_module()
    assert isinstance(model.decoder, ToyDecoder) and isinstance(model.decoder, CaptionDecoder)
    batches = _feature_batches()
    first = model.compute_loss(**batches[0], ratio=1.0)["loss"].item()
    trainer = quiet_cpu_trainer(max_epochs=15, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    model.eval()
    last = model.compute_loss(**batches[0], ratio=1.0)["loss"].item()
    assert last < first * 0.2, (first, last)

    features = batches[0]["features"]
    greedy, _ = model.caption_features(features, beam_size=1)
    beam, result = model.caption_features(features, beam_size=3)
    expected = [
        "a red circle" if r == ["a red circle"] else "a blue square"
        for r in batches[0]["references"]
    ]
    assert greedy == expected and beam == expected
    assert all(a.shape == (3, 4) for a in result.alphas)  # attention maps reach the callers

    path = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["decoder"] == {
        "name": "tests.decoders.test_seams:ToyDecoder",
        "hidden": 24,
    }
    restored = CaptioningModule(**checkpoint["hyper_parameters"])
    restored.load_state_dict(checkpoint["state_dict"])
    assert restored.eval().caption_features(features, beam_size=3)[0] == beam


def test_sampling_goes_through_the_contract_with_gradients():
    torch.manual_seed(0)
    decoder = ToyDecoder(len(WORDS), 8)
    features = torch.randn(3, 4, 8)
    result = sample_captions(
        decoder, features, n=4, max_len=6, generator=torch.Generator().manual_seed(1)
    )
    N, L_ = result.tokens.shape
    assert N == 12 and L_ <= 6 and result.log_probs.shape == (N, L_)
    assert not result.tokens.eq(START_ID).any()  # never sampled
    # after <end>, padding and no log-probability
    for row, mask in zip(result.tokens.tolist(), result.mask.tolist(), strict=True):
        if END_ID in row:
            cut = row.index(END_ID) + 1
            assert all(t == PAD_ID for t in row[cut:]) and not any(mask[cut:])
            assert all(mask[:cut])
    assert (result.log_probs <= 0).all() and (result.log_probs[~result.mask] == 0).all()
    result.log_probs.sum().backward()
    assert decoder.cell.weight.grad is not None and decoder.cell.weight.grad.abs().sum() > 0


def test_lstm_rows_of_an_image_share_its_memory():
    decoder = AttentionLSTMDecoder(len(WORDS), 8, embed_dim=8, decoder_dim=8, attention_dim=8)
    state = decoder.init_state(torch.randn(2, 4, 8))
    beams = state.select(repeat_rows(2, 3, "cpu"))
    assert beams.h.shape == (6, 8)
    assert beams.features is state.features and beams.projected is state.projected  # no copies
    reordered = beams.select(torch.tensor([[2, 2, 0], [3, 5, 4]]))
    assert torch.equal(reordered.h[3:], beams.h[[3, 5, 4]])


def test_beam_search_is_the_same_whatever_decoder_class_computes_it():
    """Beam search over the toy decoder: a batch equals each image alone (the contract holds
    for batching, not only for the LSTM)."""
    torch.manual_seed(3)
    decoder = ToyDecoder(len(WORDS), 8).eval()
    with torch.no_grad():
        decoder.out.weight.mul_(4)
    features = torch.randn(4, 4, 8)
    batch = beam_search(decoder, features, beam_size=3, max_len=7)
    for i in range(4):
        alone = beam_search(decoder, features[i : i + 1], beam_size=3, max_len=7)
        assert alone.tokens[0] == batch.tokens[i]
        assert torch.allclose(alone.scores, batch.scores[i : i + 1], atol=1e-5)


# ---- registries ----------------------------------------------------------------------------------


def test_unknown_decoder_and_objective_names_list_the_choices():
    with pytest.raises(ConfigError, match=r"model\.decoder\.name='nope'.*lstm_attention"):
        build_decoder({"name": "nope"}, 10, 8)
    with pytest.raises(ConfigError, match=r"model\.objective\.name='nope'.*xe"):
        build_objective({"name": "nope"})
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_decoder({"name": "no_such_package.mod:Decoder"}, 10, 8)


def test_a_setting_the_decoder_does_not_take_is_named():
    with pytest.raises(
        ConfigError, match=r"model\.decoder\.hidden_size is not a setting of the lstm_attention"
    ):
        build_decoder({"name": "lstm_attention", "hidden_size": 3}, 10, 8)
    with pytest.raises(ConfigError, match=r"model\.objective\.beta is not a setting of the xe"):
        build_objective({"name": "xe", "beta": 1})


# ---- checkpoints of the format before the seams ---------------------------------------------


def test_format_1_checkpoint_loads_and_decodes_as_it_did():
    """The fixture was written by `train.py experiment=demo` (dims 8) before the decoder seam;
    the JSON holds what it decoded then, on seeded random features."""
    path = FIXTURES / "checkpoint_format1.ckpt"
    expected = json.loads((FIXTURES / "checkpoint_format1_expected.json").read_text())
    checkpoint = read_checkpoint(path)
    assert checkpoint[CHECKPOINT_KEY]["upgraded_from"] == 1
    assert checkpoint["hyper_parameters"]["decoder"] == {
        "name": "lstm_attention",
        "attention_dim": 8,
        "embed_dim": 8,
        "decoder_dim": 8,
        "dropout": 0.2,
        "deep_output": False,
        "unroll": "auto",
    }
    assert checkpoint[CHECKPOINT_KEY]["config"]["model"]["objective"] == {
        "name": "xe",
        "alpha_c": 1.0,
    }
    model, _ = load_captioner(path)
    features = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    for k in (1, 3):
        captions, result = model.caption_features(features, beam_size=k)
        assert captions == expected[f"beam{k}"]["captions"]
        assert torch.allclose(
            result.scores, torch.tensor(expected[f"beam{k}"]["scores"]), atol=1e-4
        )


def test_a_checkpoint_of_an_unknown_format_names_the_version(tmp_path):
    checkpoint = torch.load(FIXTURES / "checkpoint_format1.ckpt", weights_only=True)
    checkpoint[CHECKPOINT_KEY]["format"] = 7
    path = tmp_path / "future.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(
        CheckpointError, match="checkpoint format 7, this imgcap reads formats 1 to 3"
    ):
        read_checkpoint(path)


def test_settings_a_decoder_cannot_honour_are_refused_when_the_model_is_built():
    transformer = {
        "name": "transformer",
        "d_model": 8,
        "num_layers": 1,
        "num_heads": 2,
        "ff_dim": 8,
    }
    with pytest.raises(ConfigError, match="does not do scheduled sampling"):
        _toy_module(decoder=transformer, teacher_forcing_ratio=0.8)
    with pytest.raises(ConfigError, match="does not do scheduled sampling"):
        _toy_module(decoder=transformer, teacher_forcing_schedule={"end": 0.7, "epochs": 3})
    with pytest.raises(
        ConfigError, match=r"model.max_len=100 is longer .* model.decoder.max_len=64"
    ):
        _toy_module(decoder=transformer, max_len=100)
    _toy_module(decoder={"name": "lstm_attention", "attention_dim": 8}, teacher_forcing_ratio=0.8)


def test_the_design_cards_flat_keys_are_aliases_of_where_the_settings_live():
    from imgcap.config_aliases import canonical_key, canonical_override, canonical_overrides

    assert canonical_key("model.attention_dim") == "model.decoder.attention_dim"
    assert canonical_key("model.decoder.attention_dim") == "model.decoder.attention_dim"
    assert canonical_key("model.alpha_c") == "model.objective.alpha_c"
    assert canonical_override("model.attention_dim=256,512") == (
        "++model.decoder.attention_dim=256,512"
    )
    assert canonical_override("+model.decoder_unroll=fixed") == "++model.decoder.unroll=fixed"
    assert canonical_override("~model.alpha_c") == "~model.objective.alpha_c"
    assert canonical_overrides(["-m", "experiment=demo", "model.embed_dim=64"]) == [
        "-m",
        "experiment=demo",
        "++model.decoder.embed_dim=64",
    ]


def test_an_alias_composes_to_the_real_key_and_one_the_decoder_lacks_is_one_line(tmp_path):
    from imgcap.config_aliases import canonical_overrides
    from imgcap.run.checks import check_train_config
    from tests.support.hydra_helpers import compose_train

    cfg = compose_train(
        tmp_path, canonical_overrides(["experiment=demo", "model.attention_dim=48"])
    )
    assert cfg.model.decoder.attention_dim == 48 and "attention_dim" not in cfg.model
    check_train_config(cfg)
    cfg = compose_train(
        tmp_path,
        canonical_overrides(
            ["experiment=demo", "model/decoder=transformer", "model.attention_dim=48"]
        ),
    )
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    assert str(err.value).startswith(
        "model.attention_dim (= model.decoder.attention_dim) is not a setting of the transformer "
        "decoder; its settings are ['d_model'"
    )
    cfg = compose_train(
        tmp_path,
        canonical_overrides(["experiment=demo", "model/objective=scst", "model.alpha_c=0.5"]),
    )
    with pytest.raises(ConfigError, match=r"model.alpha_c \(= model.objective.alpha_c\) is not"):
        check_train_config(cfg)
