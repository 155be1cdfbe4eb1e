"""`python evaluate.py [overrides]`: see conf/evaluate.yaml and the README."""

import hydra
from omegaconf import DictConfig

from imgcap.run import tasks
from imgcap.run.cli import prepare_environment, run_task

prepare_environment(__file__)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig):
    return run_task(tasks.evaluate, cfg)


if __name__ == "__main__":
    main()
