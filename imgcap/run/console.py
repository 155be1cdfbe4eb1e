"""What the entry scripts show: messages through ``logging`` (so the run's log file holds what
the console showed), warnings in one line, and errors whose last line is their cause.

The console handlers print the bare message (INFO to stdout, warnings and errors to stderr);
the log file adds time, logger and level and never holds terminal escapes or carriage returns
(see ``conf/hydra/default.yaml``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import Any

# Terminal control sequences (colours, cursor moves such as tqdm's "ESC[A") and carriage returns.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\r")


def strip_escapes(text: str) -> str:
    """``text`` without terminal escapes or carriage returns (what a log file should hold)."""
    return _ESCAPES.sub("", text)


class PlainFormatter(logging.Formatter):
    """A formatter for files: the usual format, minus terminal escapes and carriage returns."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_escapes(super().format(record))


class BelowLevel(logging.Filter):
    """Pass records below ``level`` (the stdout handler; stderr takes the rest)."""

    def __init__(self, level: str | int = "WARNING") -> None:
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: Any = None
) -> str:
    """``warnings.formatwarning`` without the file name and the echoed source line."""
    text = str(message).strip()
    if not text.lower().startswith("warning"):
        text = f"warning: {text}"
    return text + "\n"


def route_library_logs() -> None:
    """Send Lightning's messages and Python warnings through the handlers Hydra set up (the
    console and the run's log file): Lightning otherwise prints to its own console handler,
    and warnings to stderr only."""
    warnings.formatwarning = one_line_warning
    if not logging.getLogger().handlers:  # nobody configured logging: leave them as they are
        return
    logging.captureWarnings(True)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


class ProgressSafeHandler(logging.StreamHandler):
    """The console handler: a message written while a progress bar is open goes through
    ``tqdm.write``, which clears the bar, writes the message on a line of its own and redraws
    the bar, so no message is glued to the end of an unfinished bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is None or not getattr(tqdm, "_instances", None):
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def end_progress_lines() -> None:
    """Close the progress bars still open, so that the next message starts its own line instead
    of being glued to the end of an unfinished bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", [])):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass
    sys.stdout.flush()


def hydra_error_line(err: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while composing the config or building
    an object from it (unknown config group option, bad override, invalid argument)."""
    from hydra.errors import InstantiationException

    if isinstance(err, InstantiationException):
        text = str(err)
        target = re.search(r"target '([^']+)'", text)
        key = re.search(r"full_key: (\S+)", text)
        cause = err.__cause__
        reason = (
            str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
        )
        if not reason:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            reason = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
        what = (key.group(1) if key else "") or (target.group(1) if target else "an object")
        return f"cannot build {what} from the config: {reason}"
    lines = [ln.rstrip() for ln in str(err).splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    head = lines[0].strip() if lines else type(err).__name__
    options: list[str] = []
    for i, ln in enumerate(lines):
        if ln.startswith("Available options"):
            for opt in lines[i + 1 :]:
                if not opt.startswith(("\t", " ")):
                    break
                options.append(opt.strip())
            break
    if options:
        head += f" (available: {', '.join(options)})"
    elif len(lines) > 1 and "full_key" not in lines[1]:
        head += " " + " ".join(ln.strip() for ln in lines[1:3])
    return head


def _is_config_error(err: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(err, HydraException | OmegaConfBaseException)


_user_full_error = False


def _excepthook(kind: type[BaseException], err: BaseException, tb: Any) -> None:
    if not _user_full_error and _is_config_error(err):
        end_progress_lines()
        sys.stderr.write(f"error: {hydra_error_line(err)}\n")
        return
    sys.__excepthook__(kind, err, tb)


def one_line_config_errors() -> None:
    """Hydra's own errors (``experiment=nonexistent``) end with its hint to set
    HYDRA_FULL_ERROR=1, below the cause: here they end with the cause, in one ``error:`` line.
    Hydra then re-raises instead of printing; a user who sets HYDRA_FULL_ERROR gets the full
    traceback as before."""
    global _user_full_error
    # Child processes (DDP ranks) inherit the variable: the marker says it was set here.
    ours = os.environ.get("IMGCAP_SET_HYDRA_FULL_ERROR") == "1"
    _user_full_error = "HYDRA_FULL_ERROR" in os.environ and not ours
    if "HYDRA_FULL_ERROR" not in os.environ:
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ["IMGCAP_SET_HYDRA_FULL_ERROR"] = "1"
    sys.excepthook = _excepthook
