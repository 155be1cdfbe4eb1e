"""Logger setup: W&B credentials, sweep groups and run names, and what each run reports.

W&B decides itself whether it holds credentials (``WANDB_API_KEY``, a ``.netrc`` entry for the
server it talks to, ``WANDB_BASE_URL`` for self-hosted servers, its settings file); only when
it has none does a run go offline, with one line saying so. It never prompts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgcap.atomic import write_text
from imgcap.errors import ConfigError
from imgcap.run.instantiation import instantiate

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
        log.warning(
            "W&B: no credentials found (WANDB_API_KEY, `wandb login`, .netrc): logging offline "
            "into the run directory; upload later with `wandb sync`"
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
    swept = set((hydra_cfg.sweeper.get("params") or {}).keys()) or swept_keys(sweep_dir)
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
    from imgcap.run.trial_link import trial_address

    trial = trial_address()
    if trial is not None:  # an Optuna study: its runs form one group, across reruns too
        return trial.study, f"trial{trial.number}:{name}"
    return group, name


def swept_keys(sweep_dir: Path) -> set[str]:
    """The keys a command-line sweep varies (``x=1,2``, ``x=range(3)``, ``x=choice(a,b)``), read
    from the sweep's ``multirun.yaml`` (the command line as given); empty when unknown. The other
    overrides are the same in every job and say nothing about a run."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return set()
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        given = OmegaConf.load(path).hydra.overrides.task
        parsed = OverridesParser.create().parse_overrides([str(o) for o in given])
    except Exception:  # noqa: BLE001 - an unreadable record only makes names longer
        return set()
    return {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}


RUN_ID_FILE = Path("wandb") / "run_id.txt"


def _experiment_choice() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = (HydraConfig.get().runtime.choices or {}).get("experiment")
    except ValueError:
        return None
    return None if choice in (None, "None", "null") else str(choice)


def assign_wandb_identity(cfg: DictConfig) -> None:
    """Fix the W&B run id, name and group in ``cfg`` before the run config is stored in its
    checkpoints, so a resumed run (``ckpt_path=``) continues the same W&B run. The id is also
    kept in ``<run dir>/wandb/run_id.txt``. Single runs are grouped by experiment and named
    ``<experiment>_<date>_<time>`` (the run directory); sweep jobs by :func:`sweep_job`."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or "WandbLogger" not in str(wandb_cfg.get("_target_", "")):
        return
    # The run directory; a bare logger config (the Python API) keeps the id beside its files.
    output_dir = Path(OmegaConf.select(cfg, "paths.output_dir") or wandb_cfg.get("save_dir") or ".")
    id_file = output_dir / RUN_ID_FILE
    run_id = wandb_cfg.get("id")
    if not run_id and id_file.is_file():
        run_id = id_file.read_text().strip() or None
    if not run_id:  # W&B's own form: 8 lower-case letters and digits
        alphabet = string.ascii_lowercase + string.digits
        run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    group, name = sweep_job() or (None, None)
    if group is None:
        experiment = _experiment_choice()
        group = experiment or str(cfg.get("task_name") or "train")
        name = f"{experiment or group}_{output_dir.parent.name}_{output_dir.name}"
    with open_dict(cfg):
        wandb_cfg.id = str(run_id)
        wandb_cfg.name = wandb_cfg.get("name") or name
        wandb_cfg.group = wandb_cfg.get("group") or group
    write_text(id_file, f"{run_id}\n")


_NEEDS_PACKAGE = {"TensorBoardLogger": ("tensorboard", "tensorboardX")}


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The configured loggers; fixes the W&B run's identity in ``cfg`` first
    (:func:`assign_wandb_identity`)."""
    assign_wandb_identity(cfg)
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
        if "WandbLogger" in target:
            if configure_wandb_environment():
                logger_cfg["mode"] = "offline"  # passed on to wandb.init
            # imgcap's own keys, not the logger's (see watch_model)
            logger_cfg.pop("watch", None)
            logger_cfg.pop("watch_log_freq", None)
            group, name = sweep_job() or (None, None)
            logger_cfg["group"] = logger_cfg.get("group") or group
            logger_cfg["name"] = logger_cfg.get("name") or name
            if logger_cfg.get("id"):  # the same run again after ckpt_path= (see above)
                logger_cfg.setdefault("resume", "allow")
            logger = instantiate(logger_cfg)
            # Lightning passes anonymous=None, which recent wandb releases warn about.
            init_args = getattr(logger, "_wandb_init", None)
            if isinstance(init_args, dict) and init_args.get("anonymous") is None:
                init_args.pop("anonymous", None)
        else:
            logger = instantiate(logger_cfg)
        loggers.append(logger)
    return loggers


def start_logging(
    loggers: list[Logger],
    cfg: DictConfig,
    model: torch.nn.Module,
    data_split: dict[str, Any],
    params: dict[str, int],
) -> None:
    """What each logger records before training: the resolved run config with the data split
    and the model's parameter counts as hyperparameters, and (W&B) the watched model."""
    run_config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({**run_config, "data_split": data_split, "model_params": params})
    watch_model(loggers, cfg, model)


def watch_model(loggers: list[Logger], cfg: DictConfig, model: torch.nn.Module) -> None:
    """``logger.wandb.watch`` (gradients | parameters | all) every ``watch_log_freq`` steps:
    read from the config, handed to each W&B logger with the model."""
    from lightning.pytorch.loggers import WandbLogger

    wandb_cfg = (cfg.get("logger") or {}).get("wandb") or {}
    what = wandb_cfg.get("watch")
    if not what:
        return
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.watch(model, log=what, log_freq=int(wandb_cfg.get("watch_log_freq") or 100))


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
    """End-of-run facts (best checkpoint, test scores) into each W&B run's summary, ``files``
    (metrics.json) as run files, and the best checkpoint and ``files`` as W&B artifacts (a
    ``model`` and a ``metrics`` one; offline runs keep them for ``wandb sync``)."""
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
        log_artifacts(run, summary.get("best_checkpoint"), files)


def log_artifacts(run: Any, best_checkpoint: str | None, files: list[Path]) -> None:
    import wandb

    if best_checkpoint and Path(best_checkpoint).is_file():
        model = wandb.Artifact(f"model-{run.id}", type="model", metadata={"file": "best.ckpt"})
        model.add_file(str(best_checkpoint), name=Path(best_checkpoint).name)
        run.log_artifact(model, aliases=["best", "latest"])
    present = [p for p in files if p.is_file()]
    if present:
        metrics = wandb.Artifact(f"metrics-{run.id}", type="metrics")
        for path in present:
            metrics.add_file(str(path), name=path.name)
        run.log_artifact(metrics)


def finish_loggers(loggers: list) -> None:
    """Close what the loggers hold open (the W&B run), so the next job of a sweep starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
        # Stop the background service too: it closes the run's log file, so an offline run is
        # complete on disk (ready for `wandb sync`) when train() returns.
        wandb.teardown()
