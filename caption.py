"""`python caption.py [overrides]`: see conf/caption.yaml and the README."""

import hydra
from omegaconf import DictConfig

from imgcap.run import tasks
from imgcap.run.cli import prepare_environment, run_task

prepare_environment(__file__)


@hydra.main(version_base="1.3", config_path="conf", config_name="caption")
def main(cfg: DictConfig):
    return run_task(tasks.caption, cfg)


if __name__ == "__main__":
    main()
