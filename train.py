"""`python train.py [overrides]`: see conf/train.yaml and the README."""

import sys

import hydra
from omegaconf import DictConfig

from imgcap.config_aliases import canonical_overrides
from imgcap.run import tasks
from imgcap.run.cli import prepare_environment, run_task
from imgcap.run.resume import resume_arguments

prepare_environment(__file__)
# The design card's flat keys (model.attention_dim=512) name where the setting lives now.
sys.argv[1:] = canonical_overrides(sys.argv[1:])
# `ckpt_path=` alone resumes the run it came from, in its own directory.
sys.argv[1:] = resume_arguments(sys.argv[1:])


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    return run_task(tasks.train, cfg)


if __name__ == "__main__":
    main()
