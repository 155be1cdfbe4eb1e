"""One plug-in mechanism: decoders, objectives and readers register in the same Registry class,
under a name and aliases; a plug-in's settings dataclass checks its values when it is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from imgcap.data.readers import READERS
from imgcap.decoders import DECODERS, AttentionLSTMDecoder, build_decoder
from imgcap.decoders.lstm_attention import LSTMAttentionSettings
from imgcap.decoders.transformer import TransformerSettings
from imgcap.errors import ConfigError
from imgcap.objectives import OBJECTIVES, build_objective
from imgcap.objectives.scst import SCSTSettings
from imgcap.objectives.xe import XESettings
from imgcap.registry import Registry
from imgcap.settings import Settings, check_beam_size, integer, number


@pytest.fixture
def scratch(request):
    """Registrations made inside a test are undone after it."""
    registries = (DECODERS, OBJECTIVES)
    saved = [(dict(r.classes), dict(r.aliases)) for r in registries]
    yield
    for r, (classes, aliases) in zip(registries, saved, strict=True):
        r.classes.clear()
        r.classes.update(classes)
        r.aliases.clear()
        r.aliases.update(aliases)


def test_decoders_objectives_and_readers_share_one_registry_class():
    assert all(isinstance(r, Registry) for r in (DECODERS, OBJECTIVES, READERS))
    assert list(DECODERS) == ["lstm_attention", "transformer"]  # iterable by name
    assert list(OBJECTIVES) == ["scst", "xe"]
    assert DECODERS["lstm_attention"] is AttentionLSTMDecoder
    assert READERS.canonical("kaggle_csv") == "kaggle" and "token_file" in READERS
    settings = {name: DECODERS[name].settings_class for name in DECODERS} | {
        name: OBJECTIVES[name].settings_class for name in OBJECTIVES
    }
    assert settings == {
        "lstm_attention": LSTMAttentionSettings,
        "transformer": TransformerSettings,
        "xe": XESettings,
        "scst": SCSTSettings,
    }


@dataclass(frozen=True)
class GRUSettings(Settings):
    config_key: ClassVar[str] = "model.decoder"

    hidden: int = integer(16)
    dropout: float = number(0.0, high=1.0, high_open=True)


class GRUDecoder(nn.Module):
    """Only what the registry needs: a settings class and a constructor taking it."""

    settings_class = GRUSettings

    def __init__(self, vocab_size: int, encoder_dim: int, *args: Any, settings=None, **kwargs):
        super().__init__()
        self.settings = settings or GRUSettings.from_args(*args, **kwargs)
        self.vocab_size = vocab_size
        self.cell = nn.GRUCell(encoder_dim, self.settings.hidden)


def test_a_decoder_registers_with_aliases_and_its_settings_check_values(scratch):
    DECODERS.register("gru", aliases=("gru_decoder", "recurrent"))(GRUDecoder)
    assert "gru" in list(DECODERS) and DECODERS.aliases_of("gru") == ["gru_decoder", "recurrent"]
    decoder = build_decoder({"name": "recurrent", "hidden": 12}, vocab_size=9, encoder_dim=4)
    assert isinstance(decoder, GRUDecoder) and decoder.settings == GRUSettings(hidden=12)
    assert decoder.cell.hidden_size == 12
    with pytest.raises(ConfigError) as err:
        build_decoder({"name": "gru_decoder", "hidden": 0}, 9, 4)
    assert str(err.value) == (
        "model.decoder.hidden=0 must be an integer >= 1, e.g. model.decoder.hidden=1"
    )
    with pytest.raises(ConfigError, match=r"model\.decoder\.width is not a setting of the gru"):
        build_decoder({"name": "gru", "width": 3}, 9, 4)
    # a name or alias another class holds is refused
    with pytest.raises(AssertionError, match="'recurrent' of .* is already taken by 'gru'"):
        DECODERS.register("rnn", aliases=("recurrent",))(AttentionLSTMDecoder)


def test_an_objective_registers_with_an_alias(scratch):
    cross_entropy = OBJECTIVES["xe"]
    OBJECTIVES.register("cross_entropy_again", aliases=("ce",))(type("CE", (cross_entropy,), {}))
    objective = build_objective({"name": "ce", "alpha_c": 0.5})
    assert isinstance(objective, cross_entropy) and objective.alpha_c == 0.5


def test_settings_are_checked_however_the_plugin_is_built():
    # positionally in field order, by name, or as one instance: the same checked settings
    by_position = AttentionLSTMDecoder(9, 4, 8, 10, 12)
    assert (by_position.embed_dim, by_position.decoder_dim, by_position.attention_dim) == (
        8,
        10,
        12,
    )
    same = AttentionLSTMDecoder(9, 4, settings=by_position.settings)
    assert same.settings is by_position.settings
    with pytest.raises(ConfigError, match=r"^model\.decoder\.dropout=1\.0 must be a number"):
        AttentionLSTMDecoder(9, 4, dropout=1.0)
    with pytest.raises(ConfigError, match=r"model\.decoder\.d_model=18 must be a multiple"):
        TransformerSettings(d_model=18, num_heads=4)
    with pytest.raises(ConfigError, match=r"^model\.objective\.num_logged=-1 must be an integer"):
        SCSTSettings(num_logged=-1)
    with pytest.raises(TypeError, match="its settings are"):
        AttentionLSTMDecoder(9, 4, hidden=3)
    # settings are plain values (what checkpoints store)
    plain = LSTMAttentionSettings().as_dict()
    assert plain["unroll"] == "auto" and all(
        isinstance(v, int | float | str | bool | type(None)) for v in plain.values()
    )


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True, None, [3]])
def test_one_beam_size_check_everywhere(bad):
    assert check_beam_size(3) == 3 and check_beam_size(torch.tensor(2)) == 2
    with pytest.raises(ConfigError, match=r"^model\.beam_size=.* must be a positive int"):
        check_beam_size(bad, "model.beam_size")
