"""Files written whole or not at all.

Every file the project writes goes to a temporary file in the same folder (a rename across
file systems would copy, and could fail half-way), is flushed to disk, and is then renamed over
the target. A write that fails (a full disk, a quota, a read-only folder) leaves the previous
version of the file intact and no temporary file behind, and raises :class:`WriteError`: one
line naming the file, its folder and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from imgcap.errors import ImgcapError


class WriteError(ImgcapError, OSError):
    """A file could not be written (``str(err)`` names the file, its folder and the cause)."""


_HINTS = {
    errno.ENOSPC: "free some space there or point paths.log_dir at a larger disk",
    errno.EDQUOT: "the disk quota is used up: free some space or point paths.log_dir elsewhere",
    errno.EROFS: "the folder is read-only: point paths.log_dir at a writable folder",
    errno.EACCES: "no permission to write there: point paths.log_dir at a writable folder",
}


def write_error_message(path: str | os.PathLike | None, err: OSError) -> str:
    """The one line for a failed write: which file, which folder, why, what to do."""
    cause = err.strerror or str(err) or type(err).__name__
    code = errno.errorcode.get(err.errno or -1)
    if code:
        cause = f"{cause} ({code})"
    hint = _HINTS.get(err.errno or -1, "")
    if path is None:
        where = "a file"
    else:
        p = Path(path)
        where = f"{p.name} in {p.parent.resolve() if str(p.parent) else Path.cwd()}"
    return f"cannot write {where}: {cause}" + (f"; {hint}" if hint else "")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``with atomic_open(path, "w") as f:`` writes ``path`` through a temporary file in the same
    folder, flushed and fsynced, then renamed into place. On any error the temporary file is
    removed and the previous ``path`` (if any) is untouched; an OSError becomes a WriteError."""
    path = Path(path)
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, _mode_for(path))  # mkstemp makes it private; keep the usual permissions
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(write_error_message(path, err)) from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _mode_for(path: Path) -> int:
    """The permissions of the file being replaced, else what a plain ``open`` would give."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(payload, indent=indent))


def write_with(path: str | os.PathLike, writer: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``writer(file)`` on the temporary file (e.g. ``torch.save``, ``fig.savefig``)."""
    with atomic_open(path, "wb" if binary else "w") as f:
        writer(f)


def publish_dir(tmp: str | os.PathLike, root: str | os.PathLike) -> None:
    """Move a folder built completely in ``tmp`` (a sibling of ``root``) to ``root``, replacing
    what was there: readers see the old folder or the new one, never a half-written one."""
    tmp, root = Path(tmp), Path(root)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset folder is for every reader
    if root.exists():
        old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old-"))
        os.replace(root, old / "set")
        os.replace(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, root)
