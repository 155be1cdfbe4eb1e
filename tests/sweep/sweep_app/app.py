"""A Hydra app with a cheap objective for the sweeper's tests (no training).

Each "epoch" reports ``-(x - 1)^2 - y + epoch / 10`` to its trial and may be pruned, writes
``checkpoints/last.ckpt`` (the epoch reached) so a retry resumes, and can be told to diverge.
"""

import math
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from imgcap.run.trial_link import (
        ATTR_EPOCHS,
        ATTR_EPOCHS_RUN,
        ATTR_PRUNED_AT,
        ATTR_RUN_DIR,
        LinkedTrial,
        trial_address,
    )

    address = trial_address()
    link = LinkedTrial(address) if address else None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    start = 0
    if cfg.ckpt_path:
        checkpoint = Path(cfg.ckpt_path)
        run_dir = checkpoint.parent.parent
        start = int(checkpoint.read_text())
    number = address.number if address else -1
    with open(cfg.record, "a") as f:
        f.write(f"{number} {cfg.x} {cfg.y} {start}\n")
    if link:
        link.set(ATTR_RUN_DIR, str(run_dir))
    value = float("nan")
    for epoch in range(start, cfg.epochs):
        time.sleep(cfg.sleep)
        if cfg.nan_at is not None and epoch >= cfg.nan_at:
            raise FloatingPointError(f"the loss is nan at epoch {epoch}")
        value = -((cfg.x - 1.0) ** 2) - cfg.y + epoch / 10
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "checkpoints" / "last.tmp"
        tmp.write_text(str(epoch + 1))
        os.replace(tmp, run_dir / "checkpoints" / "last.ckpt")
        if link:
            link.set(ATTR_EPOCHS, epoch + 1)
            link.set(ATTR_EPOCHS_RUN, epoch + 1 - start)
            if math.isfinite(value) and link.report(value, epoch):
                link.set(ATTR_PRUNED_AT, epoch)
                return value
    return value


if __name__ == "__main__":
    main()
