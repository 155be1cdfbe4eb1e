"""Every experiment config composes and builds its data module, model and trainer; overrides
reach the built objects."""

from pathlib import Path

import lightning.pytorch as L
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from imgcap.captioning_module import CaptioningModule
from imgcap.data.datamodule import CaptionDataModule
from imgcap.run.checks import register_config_schemas
from tests.support.hydra_helpers import CONF_DIR, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle"]


def test_experiment_list_is_complete():
    assert {"demo", "flickr8k", "flickr8k_finetune"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    # No pretrained weights can be fetched in tests: the enum path is covered elsewhere.
    cfg = compose_train(tmp_path, [f"experiment={experiment}", "model.encoder.weights=null"])
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, CaptionDataModule)
    model = instantiate(cfg.model, vocab=VOCAB)
    assert isinstance(model, CaptioningModule)
    assert model.decoder.vocab_size == len(VOCAB)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, L.Trainer)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    assert all(isinstance(c, L.Callback) for c in callbacks)
    assert Path(cfg.paths.output_dir) == tmp_path / "run"


@pytest.mark.parametrize(
    "config",
    [
        "trainer=cpu",
        "trainer=gpu",
        "trainer=ddp",
        "logger=wandb",
        "logger=none",
        "debug=fdr",
        "debug=overfit",
        "debug=limit",
        "debug=profiler",
        "trainer=ddp_sim",
        "trainer=mps",
        "logger=tensorboard",
        "logger=many",
    ],
)
def test_group_options_compose(config, tmp_path):
    cfg = compose_train(tmp_path, [config])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_attention_dim_override_reaches_the_network(tmp_path):
    cfg = compose_train(
        tmp_path,
        [
            "model.decoder.attention_dim=64",
            "model.decoder.decoder_dim=48",
            "model.encoder.arch=small_cnn",
            "model.encoder.weights=null",
        ],
    )
    model = instantiate(cfg.model, vocab=VOCAB)
    assert model.decoder.attention.encoder_proj.out_features == 64
    assert model.decoder.attention.decoder_proj.out_features == 64
    assert model.decoder.lstm.hidden_size == 48


def test_monitor_is_shared_by_checkpoint_early_stopping_and_sweep(tmp_path):
    cfg = compose_train(tmp_path, ["monitor=val/BLEU-4"])
    assert cfg.callbacks.model_checkpoint.monitor == "val/BLEU-4"
    assert cfg.callbacks.early_stopping.monitor == "val/BLEU-4"
    assert cfg.optimized_metric == "val/BLEU-4"
    assert cfg.model.monitor == "val/BLEU-4"


def test_optuna_search_composes(tmp_path):
    pytest.importorskip("hydra_plugins.imgcap_sweeper")
    cfg = compose_train(tmp_path, ["hparams_search=optuna"])
    sweeper = HydraConfig.get().sweeper
    assert cfg.optimized_metric == "val/CIDEr"
    assert sweeper.direction == "maximize"
    assert set(sweeper.params) == {
        "model.decoder.attention_dim",
        "model.decoder.decoder_dim",
        "model.optimizer.lr",
        "model.decoder.dropout",
    }


def test_new_group_options_build_what_they_promise(tmp_path):
    cfg = compose_train(tmp_path, ["debug=profiler", "trainer=cpu"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert type(trainer.profiler).__name__ == "SimpleProfiler"
    cfg = compose_train(tmp_path, ["trainer=ddp_sim"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.strategy.process_group_backend == "gloo" and trainer.num_devices == 2
    cfg = compose_train(tmp_path, ["debug=limit"])
    assert cfg.trainer.limit_train_batches == 20 and cfg.trainer.max_epochs == 3


def test_optional_local_config_is_applied_when_present(tmp_path):
    """conf/local/default.yaml (git-ignored) holds machine-specific settings."""
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf, ignore=shutil.ignore_patterns("local"))
    for present in (False, True):
        if present:
            (conf / "local").mkdir()
            (conf / "local" / "default.yaml").write_text(
                "# @package _global_\npaths:\n  data_dir: /srv/datasets\n"
            )
        GlobalHydra.instance().clear()
        register_config_schemas()  # what the entry scripts do before composing
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="train")
        expected = "/srv/datasets" if present else "${paths.root_dir}/data"
        assert OmegaConf.to_container(cfg.paths)["data_dir"] == expected
    assert "/conf/local/" in (CONF_DIR.parent / ".gitignore").read_text()


def test_sweep_direction_follows_monitor_mode(tmp_path):
    pytest.importorskip("hydra_plugins.imgcap_sweeper")
    compose_train(tmp_path, ["hparams_search=optuna", "monitor=val/loss", "monitor_mode=min"])
    assert HydraConfig.get().sweeper.direction == "minimize"


@pytest.mark.parametrize("task", ["train", "evaluate", "caption"])
def test_each_task_runs_in_its_own_folder(task, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    register_config_schemas()  # what the entry scripts do before composing
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=task, return_hydra_config=True)
    # read unresolved: resolving ${unique_dir:...} would create the folder
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    sweep_dir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"]
    assert run_dir.startswith("${unique_dir:${paths.log_dir}/${task_name}/runs/")
    assert sweep_dir.startswith("${unique_dir:${paths.log_dir}/${task_name}/multiruns/")
    assert cfg.task_name == task and cfg.paths.log_dir.rstrip("/").endswith("outputs")


def test_one_config_file_per_callback_each_under_its_own_key(tmp_path):
    folder = CONF_DIR / "callbacks"
    listed = OmegaConf.load(folder / "default.yaml").defaults
    files = sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "default")
    assert sorted(n for n in listed if n != "_self_") == files
    for name in files:
        assert list(OmegaConf.load(folder / f"{name}.yaml")) == [name], name
    # Composed, the keys are the files' names, in the order of the defaults list, and each can
    # be changed or turned off by its name.
    cfg = compose_train(
        tmp_path,
        ["callbacks.progress_bar=null", "callbacks.encoder_fine_tuning.unfreeze_at_epoch=3"],
    )
    assert list(cfg.callbacks) == [n for n in listed if n != "_self_"]
    assert cfg.callbacks.progress_bar is None
    assert cfg.callbacks.encoder_fine_tuning.unfreeze_at_epoch == 3
    assert list(cfg.callbacks)[-1] == "phase_timer"  # last: it sees the others finish


# ---------------------------------------------------------------- plug-in settings and their YAML


def _plugin_yamls():
    from imgcap.decoders import DECODERS
    from imgcap.objectives import OBJECTIVES

    for group, registry in (("decoder", DECODERS), ("objective", OBJECTIVES)):
        for path in sorted((CONF_DIR / "model" / group).glob("*.yaml")):
            yield pytest.param(path, registry, id=f"{group}/{path.stem}")


@pytest.mark.parametrize(("path", "registry"), _plugin_yamls())
def test_every_yaml_default_is_its_settings_dataclass_default(path, registry):
    """The settings dataclass is the single home of a plug-in's defaults: its YAML extends it
    as a schema and restates every field with the same value (and nothing else)."""
    import yaml

    from imgcap.settings import settings_of

    written = yaml.safe_load(path.read_text())
    assert written.pop("defaults") == [f"{path.stem}_schema", "_self_"]
    assert written.pop("name") == path.stem
    settings = settings_of(registry.get(path.stem))
    assert settings is not None, f"{path.stem} declares no settings dataclass"
    assert written == settings.defaults()


def test_the_schema_fills_in_what_a_yaml_leaves_out(tmp_path):
    """Composition starts from the stored schema: a decoder config file without a setting
    still gets its dataclass default (and the YAML's own values win over it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from imgcap.decoders.lstm_attention import LSTMAttentionSettings

    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(CONF_DIR, conf)
    decoder = conf / "model" / "decoder" / "lstm_attention.yaml"
    decoder.write_text(
        "defaults:\n  - lstm_attention_schema\n  - _self_\nname: lstm_attention\nembed_dim: 64\n"
    )
    GlobalHydra.instance().clear()
    register_config_schemas()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.root_dir={tmp_path}"])
    node = OmegaConf.to_container(cfg.model.decoder)
    assert node == {**LSTMAttentionSettings.defaults(), "name": "lstm_attention", "embed_dim": 64}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.decoder.attention_dim=abc", "model.decoder.attention_dim='abc' must be an integer"),
        ("model.decoder.dropout=1.0", "model.decoder.dropout=1.0 must be a number in [0.0, 1.0)"),
        ("model.decoder.deep_output=maybe", "model.decoder.deep_output='maybe' must be true or"),
        ("model.decoder.unroll=graph", "model.decoder.unroll must be one of"),
        ("model.objective.alpha_c=-1", "model.objective.alpha_c=-1 must be a number in [0.0, inf]"),
    ],
)
def test_a_bad_plugin_value_composes_and_is_refused_in_one_line_by_its_dataclass(
    tmp_path, override, message
):
    from imgcap.errors import ConfigError
    from imgcap.run.checks import check_train_config

    cfg = compose_train(tmp_path, [override])  # the schema is untyped: no Hydra merge error
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
