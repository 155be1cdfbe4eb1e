"""`python train.py [overrides]`: see conf/train.yaml and the README."""

import sys

import hydra
from omegaconf import DictConfig

from imgcap import tasks
from imgcap.cli import moved_setting, prepare_environment, run_task
from imgcap.resume import resume_arguments

prepare_environment(__file__)
moved = moved_setting(sys.argv[1:])
if moved:  # e.g. model.attention_dim=256, from before the decoder got its own config group
    print(moved, file=sys.stderr)
    sys.exit(2)
# `ckpt_path=` alone resumes the run it came from, in its own directory.
sys.argv[1:] = resume_arguments(sys.argv[1:])


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    return run_task(tasks.train, cfg)


if __name__ == "__main__":
    main()
