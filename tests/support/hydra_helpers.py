"""Compose the project's Hydra configs in tests, as the entry scripts would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from imgcap.run.cli import register_resolvers

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(
    tmp_path: Path, config_name: str, overrides: list[str] | None = None
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with its run directory and data under ``tmp_path``.

    The hydra node is set as it is at run time, so ``${hydra:...}`` interpolations resolve.
    """
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[f"paths.root_dir={tmp_path}", *(overrides or [])],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg["hydra"]
    return cfg


def compose_train(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    return compose_config(tmp_path, "train", overrides)
