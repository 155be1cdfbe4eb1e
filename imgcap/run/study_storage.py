"""Where a study lives: a journal file by default, or any Optuna storage URL.

``hydra.sweeper.storage`` takes

* ``null`` (default): ``<paths.log_dir>/<task>/studies/<study_name>.journal``, a journal file
  at a stable place, so rerunning the same command finds the study again;
* a path to a ``.journal`` file (or ``journal:///abs/path``): Optuna's journal storage, safe
  for several processes, also on a shared filesystem (NFS) since it locks with a symlink;
* a database URL (``sqlite:///studies.db``, ``postgresql://user@host/db``, ``mysql+pymysql://...``):
  Optuna's RDB storage, for many machines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imgcap.errors import ConfigError

JOURNAL_SCHEME = "journal://"
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def quiet_storage_logs() -> None:
    """The RDB storage's migration tool logs a few lines at INFO ("Context impl SQLiteImpl",
    "setup plugin alembic...") on every connection: they say nothing to a user."""
    for name in ("alembic", "alembic.runtime.migration", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_storage(log_dir: str | Path, task_name: str, study_name: str) -> str:
    """The journal file of a study when ``hydra.sweeper.storage`` is not set."""
    return str(Path(log_dir) / task_name / "studies" / f"{study_name}.journal")


def is_journal(url: str) -> bool:
    scheme = url.split(":", 1)[0].split("+", 1)[0] if "://" in url else ""
    return scheme not in _RDB_SCHEMES and scheme not in ("redis", "grpc")


def journal_path(url: str) -> Path:
    """``journal:///a/b.journal`` or a plain path -> the file's path."""
    if url.startswith(JOURNAL_SCHEME):
        url = url[len(JOURNAL_SCHEME) :]
    return Path(url).expanduser()


def open_storage(url: str) -> Any:
    """An Optuna storage object for ``url`` (a journal file path or a database URL).

    The journal file and its folder are created when missing; a database must exist (SQLite
    creates its file)."""
    import optuna

    quiet_storage_logs()
    if not url:
        raise ConfigError("hydra.sweeper.storage is empty: give a journal file path or a URL")
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend

        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("redis"):
        from optuna.storages.journal import JournalRedisBackend

        return optuna.storages.JournalStorage(JournalRedisBackend(url))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        # A generous timeout: several workers write to one SQLite file at the same moment.
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as err:  # noqa: BLE001 - a bad URL or an unreachable server: one line
        raise ConfigError(
            f"hydra.sweeper.storage={url} cannot be opened ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); use a journal file path or a "
            "database URL such as sqlite:///studies.db"
        ) from None


def describe(url: str) -> str:
    """How to point the Optuna CLI at this storage (for the log line and the README)."""
    if is_journal(url):
        return f"optuna trials --storage {journal_path(url)} --storage-class JournalFileBackend"
    return f"optuna trials --storage {url}"
