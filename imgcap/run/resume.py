"""Resuming and stopping training runs.

* ``ckpt_path=`` alone resumes the run the checkpoint came from: its run config is inside the
  checkpoint, so the original overrides need not be repeated, and the run continues in its own
  directory. Plain value overrides given with it (``trainer.max_epochs=60``) apply on top; a
  different config-group choice (``data=flickr8k`` for a shapes run) is refused.
* SIGTERM (what SLURM sends before a job's time is up) and SIGINT (Ctrl-C) stop training at
  the next batch boundary, save ``checkpoints/on_exception.ckpt``, print the command that
  resumes, and exit with status 128 + the signal number. A second signal stops at once.
* A DataLoader worker killed by a signal from outside (SIGTERM sent to the worker alone, the
  out-of-memory killer...) ends the run the same way: :func:`killed_worker_signal` recognises
  PyTorch's error for it, and the training task reports it like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgcap.atomic import write_text
from imgcap.callbacks.safety import InterruptCheckpoint
from imgcap.checkpoint import CHECKPOINT_KEY, read_checkpoint
from imgcap.errors import ConfigError, Interrupted

log = logging.getLogger(__name__)

# Overrides that never change a resumed run's config: where things live, and Hydra's own.
_NOT_APPLIED = ("ckpt_path", "paths.", "hydra.")


def original_run_dir(ckpt_path: str | Path, run_config: dict[str, Any]) -> Path:
    """The directory a checkpoint's run lives in: ``<run>/checkpoints/x.ckpt`` -> ``<run>``
    (works for a moved or copied run folder), else the directory recorded in its config."""
    path = Path(ckpt_path).expanduser().resolve()
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return Path(run_config.get("paths", {}).get("output_dir") or path.parent)


def resume_arguments(args: list[str]) -> list[str]:
    """Command-line arguments of ``train.py`` -> the same, plus what makes Hydra continue in the
    original run directory when ``ckpt_path=`` is given (without rewriting its ``.hydra/``).

    Takes the arguments as a list (the library never reads sys.argv). An unreadable checkpoint
    leaves them unchanged: training then reports it in one line.
    """
    if any(a in ("-m", "--multirun") for a in args):
        return args
    given = [a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")]
    if not given or not given[-1] or given[-1] == "null":
        return args
    if any(a.startswith(("hydra.run.dir=", "hydra.output_subdir=")) for a in args):
        return args
    try:
        entry = read_checkpoint(given[-1])[CHECKPOINT_KEY]
    except Exception:
        return args
    run_dir = original_run_dir(given[-1], entry.get("config", {}))
    return [*args, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def _replace_prefix(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {k: _replace_prefix(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_prefix(v, old, new) for v in node]
    if isinstance(node, str) and old and (node == old or node.startswith(old + "/")):
        return new + node[len(old) :]
    return node


def _hydra_overrides() -> tuple[list[str], dict[str, Any]]:
    """This job's command-line overrides and config-group choices (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:
        return [], {}
    overrides = list(hydra_cfg.overrides.task or [])
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices) if hydra_cfg.runtime else {}
    return overrides, dict(choices or {})


def job_overrides() -> tuple[list[str], dict[str, Any]]:
    """What a checkpoint records of how its config was composed."""
    overrides, choices = _hydra_overrides()
    return [o for o in overrides if not o.startswith("ckpt_path=")], choices


def resume_config(cfg: DictConfig) -> DictConfig:
    """The config of the run ``cfg.ckpt_path`` came from, with plain overrides applied on top.

    Reads the checkpoint safely (one-line CheckpointError when it is missing, truncated,
    foreign or unsafe). The returned config writes into the original run directory.
    """
    ckpt_path = str(cfg.ckpt_path)
    entry = read_checkpoint(ckpt_path)[CHECKPOINT_KEY]
    stored: dict[str, Any] = entry["config"]
    old_dir = str(stored.get("paths", {}).get("output_dir") or "")
    run_dir = original_run_dir(ckpt_path, stored)
    stored = _replace_prefix(stored, old_dir, str(run_dir))
    resumed = OmegaConf.create(stored)

    overrides, choices = _hydra_overrides()
    stored_choices = entry.get("choices") or {}
    for override in overrides:
        if override.startswith("~") or "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+")
        if key.startswith(_NOT_APPLIED) or key == "ckpt_path":
            continue
        if key in choices:  # a config group: the run's own choice must not change
            if key in stored_choices and str(stored_choices[key]) != str(choices[key]):
                raise ConfigError(
                    f"ckpt_path= resumes a run with its own config, composed with "
                    f"{key}={stored_choices[key]}; {key}={value} would change it: start a new "
                    f"run instead (or drop {key}={value})"
                )
            continue
        with open_dict(resumed):
            OmegaConf.update(
                resumed, key, OmegaConf.select(cfg, key, default=None), merge=False, force_add=True
            )
    with open_dict(resumed):
        resumed.ckpt_path = ckpt_path
        resumed.paths.output_dir = str(run_dir)
    return resumed


RESUMES_FILE = Path(".hydra") / "resumes.yaml"


def record_resume(cfg: DictConfig) -> Path:
    """Append this resume (UTC time, checkpoint, command-line overrides) to the run's
    ``.hydra/resumes.yaml``, beside the config and overrides of its first start; returns the file.
    """
    path = Path(cfg.paths.output_dir) / RESUMES_FILE
    overrides, _ = _hydra_overrides()
    entry = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(Path(str(cfg.ckpt_path)).expanduser().resolve()),
        "overrides": [o for o in overrides if not o.startswith("ckpt_path=")],
    }
    records: list[Any] = []
    if path.is_file():
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(path))
            records = list(loaded) if isinstance(loaded, list) else []
        except Exception:  # noqa: BLE001 - an unreadable record is replaced, not fatal
            records = []
    records.append(entry)
    write_text(path, OmegaConf.to_yaml(OmegaConf.create(records)))
    return path


# PyTorch's words when a loader worker dies of a signal ("... is killed by signal: Terminated.")
# or disappears ("DataLoader worker (pid(s) 123) exited unexpectedly").
_WORKER_KILLED = re.compile(r"DataLoader worker \(pid[^)]*\) is killed by signal: ([^.]+)\.")
_WORKER_GONE = re.compile(r"DataLoader worker \(pid\(s\)[^)]*\) exited unexpectedly")


def killed_worker_signal(err: BaseException) -> int | None:
    """The signal that killed a DataLoader worker when ``err`` (or an exception it was raised
    from) is PyTorch's report of it, else None. A worker that vanished without a signal named
    counts as SIGTERM."""
    by_text = {}
    for sig in signal.Signals:
        text = signal.strsignal(sig)
        if text:
            by_text[text.strip()] = int(sig)
    gone = False
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, RuntimeError):
            found = _WORKER_KILLED.search(str(err))
            if found:
                name = found.group(1).strip()
                return by_text.get(name, int(getattr(signal.Signals, name, signal.SIGTERM)))
            gone = gone or bool(_WORKER_GONE.search(str(err)))
        err = err.__cause__ or err.__context__
    return int(signal.SIGTERM) if gone else None


class SignalStop:
    """Inside ``with SignalStop(trainer) as stop:``, SIGTERM and SIGINT ask Lightning to stop at
    the next batch boundary (training or validation) instead of killing the process mid-step;
    ``stop.signum`` is the signal received (None when none). A second signal stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user means it
        if self.signum is None:
            self.signum = signum
        # Lightning's own flag: its loops raise SIGTERMException at the next safe point, and
        # the on-exception checkpoint is written from a consistent state.
        self.trainer._signal_connector.received_sigterm = True

    def __enter__(self) -> SignalStop:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for signum in self.SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def raise_if_signalled(self) -> None:
        """A signal that arrived after the last safe point of fitting or testing stops the run
        here, as one inside it would have."""
        if self.signum is not None:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "SIGINT"

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@contextlib.contextmanager
def signal_stop(trainer: Any) -> Iterator[SignalStop]:
    with SignalStop(trainer) as stop:
        yield stop


@contextlib.contextmanager
def stopping_cleanly(trainer: Any, output_dir: Path, resuming: bool) -> Iterator[SignalStop]:
    """Around fitting and testing: SIGTERM and SIGINT stop at the next safe point, and a stop
    (a signal, Ctrl-C, a loader worker killed from outside) ends as one
    :class:`~imgcap.errors.Interrupted` line naming the checkpoint to resume from."""
    with warnings.catch_warnings(), signal_stop(trainer) as stop:
        # Resuming mid-epoch is exact here (the sampler restarts at the checkpoint's
        # position), which Lightning cannot see and warns about.
        warnings.filterwarnings("ignore", message=r".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=r".*ckpt_path=.*")
        if resuming:  # continuing in its own directory, which holds its checkpoints
            warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
        try:
            yield stop
        except (SystemExit, KeyboardInterrupt) as err:
            raise interrupted(trainer, stop, output_dir) from err
        except RuntimeError as err:
            # A loader worker killed from outside: the checkpoint is saved as for Ctrl-C.
            signum = stop.signum or killed_worker_signal(err)
            if signum is None:
                raise
            stop.signum = signum
            raise interrupted(trainer, stop, output_dir) from err


def interrupted(trainer: Any, stop: SignalStop, output_dir: Path) -> Interrupted:
    """The one line (and exit status) for a run stopped by a signal or Ctrl-C."""
    saved = next(
        (cb.saved for cb in trainer.callbacks if isinstance(cb, InterruptCheckpoint) and cb.saved),
        None,
    )
    if saved is None:  # stopped while testing: training itself is complete
        last = output_dir / "checkpoints" / "last.ckpt"
        saved = last if last.is_file() else None
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
    if saved is None:
        message = f"interrupted by {stop.name} at {where}; no checkpoint to resume from was written"
    else:
        message = (
            f"interrupted by {stop.name} at {where}; saved {saved}. "
            f"Resume with: python train.py ckpt_path={saved}"
        )
    log.warning(message)
    return Interrupted(message, stop.exit_code)
