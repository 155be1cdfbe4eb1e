"""Shared plumbing of the entry scripts: one clear line for user mistakes, not a traceback;
the config tree shown once, after the checks; a console without noise."""

from __future__ import annotations

import errno
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imgcap import atomic
from imgcap.errors import ImgcapError
from imgcap.run.console import (
    end_progress_lines,
    hydra_error_line,
    one_line_config_errors,
    one_line_warning,
    route_library_logs,
)

log = logging.getLogger("imgcap")

# Messages that say nothing actionable to a user of the scripts (each from a library we
# call, not from a mistake of the user); matched narrowly so that real problems still show.
NOISE_WARNINGS = (
    r".*does not have many workers.*",
    r".*predict_dataloader.*",
    # Lightning's own use of a torch API that torch deprecated.
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    # Which accelerators exist: the Trainer config says which one is used.
    r".*(GPU|TPU|HPU) available but not used.*",
    # A frozen encoder is kept in eval mode on purpose (BatchNorm statistics stay fixed).
    r".*module\(s\) in eval mode at the start of training.*",
    # Scores are gathered across processes by the metric itself before they are logged.
    r"It is recommended to use `self.log\('(val|test)/.*sync_dist=True.*",
)
NOISE_LOG_PREFIXES = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(NOISE_LOG_PREFIXES)


def silence_noise() -> None:
    """Filter the advertising tips and library deprecations out of the console."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


def prepare_environment(script: str) -> None:
    """Anchor ``paths.root_dir`` at the scripts' folder whatever the working directory is;
    warnings in one line; Hydra's config errors end with their cause."""
    os.environ.setdefault("PROJECT_ROOT", str(Path(script).resolve().parent))
    register_resolvers()
    silence_noise()
    warnings.formatwarning = one_line_warning
    one_line_config_errors()


def is_rank_zero() -> bool:
    """False in the extra processes of a multi-process (DDP) run."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def config_tree(cfg: DictConfig) -> str:
    """The resolved config as a tree, one branch per top-level key (unresolvable values, like
    ``???`` ones, are shown as written)."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key in cfg:
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        if not OmegaConf.is_config(node):  # a plain value: one leaf
            try:
                value = cfg[key]
            except Exception:  # noqa: BLE001
                value = node._value()
            tree.add(f"{key}: {value}")
            continue
        try:
            text = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_config(node) else str(node)
        except Exception:  # noqa: BLE001 - show what was written when it cannot resolve
            text = OmegaConf.to_yaml(node) if OmegaConf.is_config(node) else str(node)
        tree.add(str(key)).add(Syntax(text.rstrip("\n"), "yaml", theme="ansi_dark"))
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(tree)
    return console.export_text()


_config_shown = False


def show_config(cfg: DictConfig) -> None:
    """Write the config tree to ``config_tree.log`` in the run directory, and show it on the
    console once per command (the first job of a sweep; later jobs only write their file).
    Called by the tasks after their checks, with the config actually used (a resumed run's)."""
    global _config_shown
    if not cfg.get("print_config") or not is_rank_zero():
        return
    text = config_tree(cfg)
    output_dir = cfg.get("paths", {}).get("output_dir")
    if output_dir:
        atomic.write_text(Path(output_dir) / "config_tree.log", text)
    if not _config_shown:
        _config_shown = True
        log.info(text.rstrip("\n"))


_RUN_DIRS: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """``path`` if it does not exist yet, else ``path-2``, ``path-3``...: the directory is
    created here (``mkdir`` is atomic), so concurrent runs can never get the same one. The
    answer is remembered per process: Hydra resolves the run directory more than once."""
    if path in _RUN_DIRS:
        return _RUN_DIRS[path]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            os.mkdir(candidate)
            break
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"
    _RUN_DIRS[path] = candidate
    return candidate


def register_resolvers() -> None:
    """The config resolvers: ``unique_dir`` (run directories) and ``imgcap.precision``; and
    the plug-ins' settings schemas the model configs extend."""
    from imgcap.run.checks import register_config_schemas
    from imgcap.run.hardware import register_resolvers as register_hardware_resolvers

    register_hardware_resolvers()
    register_config_schemas()
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", unique_dir)


def one_line(err: BaseException) -> str:
    """The message of an ImgcapError, as one line. An error raised in a DataLoader worker comes
    back wrapped in torch's "Caught ... Original Traceback" text: its last line is the message."""
    text = str(err).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1].strip()
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    for p in (prefix, f"{type(err).__name__}: "):
        if last.startswith(p):
            return last[len(p) :]
    return last


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task; an ImgcapError becomes one ``error: ...`` line on stderr and exit status 2.

    A run stopped by SIGTERM/SIGINT has printed its resume line already and exits with
    128 + the signal number (:class:`~imgcap.errors.Interrupted` is a SystemExit)."""
    from hydra.errors import InstantiationException

    route_library_logs()
    try:
        return task(cfg)
    except ImgcapError as err:
        fail(one_line(err))
    except InstantiationException as err:  # e.g. trainer.precision=banana
        fail(hydra_error_line(err))
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        fail(atomic.write_error_message(err.filename, err))


# A full disk, a quota, a read-only folder, a file too large: the user's to fix, not a bug.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def fail(message: str, status: int = 2) -> None:
    """End the run with ``error: <message>`` on its own line (stderr and the log file)."""
    end_progress_lines()
    log.error(f"error: {message}")
    sys.exit(status)
