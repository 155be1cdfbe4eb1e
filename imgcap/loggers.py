"""Logger setup: W&B credentials, sweep groups and run names, and what each run reports.

W&B decides itself whether it holds credentials (``WANDB_API_KEY``, a ``.netrc`` entry for the
server it talks to, ``WANDB_BASE_URL`` for self-hosted servers, its settings file); only when
it has none does a run go offline, with one line saying so. It never prompts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from imgcap.errors import ConfigError

if TYPE_CHECKING:  # Lightning and torch load on first use: the credential check needs neither
    import torch
    from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)

# Overrides that never name a run: paths differ between machines and say nothing about it.
PATH_KEYS = (
    "ckpt_path",
    "paths.root_dir",
    "paths.data_dir",
    "paths.log_dir",
    "paths.output_dir",
    "data.root",
    "data.cache_dir",
    "model.encoder.weights",
)


def wandb_has_credentials() -> bool:
    """Ask wandb whether it would find credentials for its server (no prompt, no network)."""
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib.wbauth import authenticate, host_url

        settings = wandb_setup.singleton().settings
        host = host_url.HostUrl(settings.base_url)
        found = authenticate._use_system_auth(host=host, source="imgcap", update_session=False)
        return found is not None
    except (ImportError, AttributeError, TypeError):
        pass
    try:  # older wandb releases
        import wandb
        from wandb.sdk.lib import apikey

        return bool(apikey.api_key(settings=wandb.setup().settings))
    except Exception:  # noqa: BLE001 - any failure here means "no usable credentials"
        return bool(os.environ.get("WANDB_API_KEY"))


_announced_offline = False


def configure_wandb_environment() -> bool:
    """Never prompt for a login: without credentials, W&B logs offline (sync later).

    Returns True when the run must be offline; the logger then passes ``mode="offline"`` to
    ``wandb.init`` (wandb reads WANDB_MODE once per process, so setting it here could come too
    late). The line saying so is printed once per process."""
    global _announced_offline
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    if wandb_has_credentials():
        return False
    if not _announced_offline:
        _announced_offline = True
        print(
            "W&B: no credentials found (WANDB_API_KEY, `wandb login`, .netrc): logging offline "
            "into the run directory; upload later with `wandb sync`",
            file=sys.stderr,
        )
    return True


def sweep_job() -> tuple[str, str] | None:
    """(group, run name) under a Hydra multirun, else None.

    The group is the sweep's date and time plus the experiment (``2026-01-31_12-00-00_flickr8k``);
    the name is the job's overrides without paths, restricted to the swept parameters when the
    sweeper lists them (Optuna), e.g. ``model.decoder.attention_dim=256,model.decoder.dropout=0.3``.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:  # not running under @hydra.main (e.g. tests calling train directly)
        return None
    if str(hydra_cfg.mode) != "RunMode.MULTIRUN":
        return None
    sweep_dir = Path(hydra_cfg.sweep.dir)
    group = f"{sweep_dir.parent.name}_{sweep_dir.name}"
    experiment = (hydra_cfg.runtime.choices or {}).get("experiment")
    if experiment and experiment != "None":
        group += f"_{experiment}"
    swept = set((hydra_cfg.sweeper.get("params") or {}).keys())
    parts = []
    for override in hydra_cfg.overrides.task:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in PATH_KEYS or os.sep in value or key in ("experiment", "hparams_search"):
            continue
        if swept and key not in swept:
            continue
        parts.append(f"{key}={value}")
    name = ",".join(parts) or f"job{hydra_cfg.job.num}"
    from imgcap.sweep.trial_link import trial_address

    trial = trial_address()
    if trial is not None:  # an Optuna study: its runs form one group, across reruns too
        return trial.study, f"trial{trial.number}:{name}"
    return group, name


_NEEDS_PACKAGE = {"TensorBoardLogger": ("tensorboard", "tensorboardX")}


def build_loggers(cfg: DictConfig) -> list[Logger]:
    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg is None:
            continue
        logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
        target = logger_cfg.get("_target_", "")
        for cls, packages in _NEEDS_PACKAGE.items():
            if target.endswith(cls) and not any(importlib.util.find_spec(p) for p in packages):
                raise ConfigError(
                    f"{cls} needs the {packages[0]} package: `pip install {packages[0]}` "
                    "(or pip install 'imgcap[tensorboard]'), or choose another logger="
                )
        from imgcap.tasks import instantiate

        if "WandbLogger" in target:
            if configure_wandb_environment():
                logger_cfg["mode"] = "offline"  # passed on to wandb.init
            watch = logger_cfg.pop("watch", None), logger_cfg.pop("watch_log_freq", 100)
            group, name = sweep_job() or (None, None)
            logger_cfg["group"] = logger_cfg.get("group") or group
            logger_cfg["name"] = logger_cfg.get("name") or name
            logger = instantiate(logger_cfg)
            logger._imgcap_watch = watch
            # Lightning passes anonymous=None, which recent wandb releases warn about.
            init_args = getattr(logger, "_wandb_init", None)
            if isinstance(init_args, dict) and init_args.get("anonymous") is None:
                init_args.pop("anonymous", None)
        else:
            logger = instantiate(logger_cfg)
        loggers.append(logger)
    return loggers


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the whole model, its trainable part, and each top-level network."""
    import torch

    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for name in ("encoder", "decoder"):
        child = getattr(model, name, None)
        if isinstance(child, torch.nn.Module):
            counts[name] = sum(p.numel() for p in child.parameters())
    return counts


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def log_run_summary(loggers: list[Logger], summary: dict[str, Any], files: list[Path]) -> None:
    """End-of-run facts (best checkpoint, test scores) into each W&B run's summary, and
    ``files`` (metrics.json) as run files."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment
        run.summary.update({k: v for k, v in summary.items() if v is not None})
        for path in files:
            if path.is_file() and getattr(run, "dir", None):
                # A copy inside the run's folder: wandb would otherwise symlink it and warn.
                copy = Path(run.dir) / path.name
                shutil.copyfile(path, copy)
                run.save(str(copy), base_path=str(run.dir), policy="now")


def finish_loggers(loggers: list) -> None:
    """Close what the loggers hold open (the W&B run), so the next job of a sweep starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
        # Stop the background service too: it closes the run's log file, so an offline run is
        # complete on disk (ready for `wandb sync`) when train() returns.
        wandb.teardown()
