"""The builders: one direction from config to data, model and callbacks, with what the model
and the callbacks need from the data given when they are built."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from imgcap.callbacks import CaptionSampleLogger
from imgcap.errors import ConfigError
from imgcap.run import builders
from imgcap.run.trial_reporter import TrialReporter
from tests.support.hydra_helpers import compose_train

RUN_PACKAGE = Path(__file__).resolve().parents[2] / "imgcap" / "run"

SMALL = [
    "data=shapes",
    "data.synthetic.num_images=24",
    "data.synthetic.image_size=32",
    "data.image_size=32",
    "data.batch_size=8",
    "model.encoder.arch=small_cnn",
    "model.encoder.weights=null",
    "++model.encoder.width=8",
    "model.encoded_size=2",
    "model.decoder.attention_dim=8",
    "model.decoder.embed_dim=8",
    "model.decoder.decoder_dim=8",
    "model.meteor=false",
    "trainer=cpu",
    "logger=none",
]


def test_cached_run_builds_the_encoder_once_for_cache_and_model(tmp_path):
    cfg = compose_train(tmp_path, [*SMALL, "data.cache_features=true"])
    datamodule, model = builders.build_data_and_model(cfg)
    # The cache and the model share one encoder, built first and given to both.
    assert datamodule.stores.encoder is model.encoder
    assert datamodule.stores.encoder_key["image_size"] == 32
    # The builder prepares the vocabulary only: the datasets (and caches) are the Trainer's
    # hooks' to build, once.
    assert datamodule.datasets == {}
    assert not list((tmp_path / ".cache" / "imgcap").glob("*.npy"))
    assert model.vocab.itos == datamodule.vocab.itos


def test_model_gets_the_training_references_but_never_stores_them(tmp_path):
    cfg = compose_train(tmp_path, SMALL)
    datamodule, model = builders.build_data_and_model(cfg)
    references = datamodule.train_references()
    assert references and model.train_references == references
    assert model.objective_context().train_references == references
    assert "train_references" not in model.hparams  # checkpoints stay plain settings
    assert "built_encoder" not in model.hparams


def test_a_trainable_encoder_with_the_feature_cache_is_refused(tmp_path):
    cfg = compose_train(
        tmp_path, [*SMALL, "data.cache_features=true", "model.encoder.fine_tune=all"]
    )
    with pytest.raises(ConfigError, match="needs a frozen encoder"):
        builders.build_data_and_model(cfg)


def test_the_sample_logger_gets_the_pictures_of_the_data(tmp_path):
    cfg = compose_train(tmp_path, SMALL)
    datamodule, _ = builders.build_data_and_model(cfg)
    callbacks = builders.configured_callbacks(cfg, datamodule, has_logger=False)
    [samples] = [c for c in callbacks if isinstance(c, CaptionSampleLogger)]
    assert samples.pictures == datamodule.picture
    image_id = datamodule.annotations.splits["val"][0]
    assert samples.pictures(image_id).shape == (32, 32, 3)  # the crop the encoder sees
    # Without a logger the LR monitor has nowhere to write: left out.
    assert "LearningRateMonitor" not in {type(c).__name__ for c in callbacks}


def test_every_run_callback_is_present_and_the_guard_comes_first(tmp_path):
    cfg = compose_train(tmp_path, SMALL)
    datamodule, _ = builders.build_data_and_model(cfg)
    trial = TrialReporter("val/CIDEr")
    names = [type(c).__name__ for c in builders.build_callbacks(cfg, datamodule, [], trial)]
    assert names[0] == "FiniteGuard" and names[-1] == "TrialReporter"
    for name in ("RunConfigInCheckpoint", "RngState", "ValidateAfterLastEpoch", "TrimRepeatedRows"):
        assert name in names
    assert names.index("ModelCheckpoint") < names.index("RunConfigInCheckpoint")


def test_init_from_gives_the_data_the_trained_vocabulary(tmp_path, monkeypatch):
    cfg = compose_train(tmp_path, SMALL)
    _, trained = builders.build_data_and_model(cfg)
    words = [*trained.vocab.itos, "zebra"]  # a vocabulary this data would not build
    fake = {"hyper_parameters": {"vocab": words}, "state_dict": {}}
    monkeypatch.setattr(builders, "read_checkpoint", lambda path: fake)
    monkeypatch.setattr(builders, "load_initial_weights", lambda model, ckpt, path: None)
    cfg = compose_train(tmp_path / "again", [*SMALL, "init_from=some.ckpt"])
    datamodule, model = builders.build_data_and_model(cfg)
    assert datamodule.vocab.itos == words and model.vocab.itos == words


def test_the_run_layer_never_imports_the_sweep_package():
    for path in RUN_PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n == "imgcap.sweep" or n.startswith("imgcap.sweep.")]
            assert not bad, f"{path.name} imports {bad}"
