"""``python -m imgcap.sweep status <storage> [--study NAME]``: a study's state, while it runs.

``<storage>`` is a journal file (``outputs/train/studies/<name>.journal``) or a database URL.
Without ``--study`` every study in the storage is listed. The Optuna CLI works on the same
storages too: ``optuna trials --storage <file> --storage-class JournalFileBackend
--study-name <name>``.
"""

from __future__ import annotations

import argparse
import sys

from imgcap.errors import ImgcapError


def status(storage_url: str, study_name: str | None) -> str:
    import optuna

    from imgcap.run.study_storage import is_journal, journal_path, open_storage
    from imgcap.sweep.results import best_summary, trial_rows

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if is_journal(storage_url) and not journal_path(storage_url).is_file():
        raise ImgcapError(
            f"no journal file at {storage_url} (studies live in outputs/train/studies/)"
        )
    storage = open_storage(storage_url)
    names = [study_name] if study_name else [s.study_name for s in storage.get_all_studies()]
    if not names:
        return f"no study in {storage_url}"
    lines = []
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ImgcapError(f"no study named {name} in {storage_url}") from None
        summary = best_summary(study, storage_url)
        counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items()) or "no trials"
        lines.append(f"study {name} ({summary['direction']}): {counts}")
        if summary.get("best_value") is not None:
            lines.append(
                f"  best: trial {summary['best_trial']} = {summary['best_value']:.4f} "
                f"{summary['best_params']}"
            )
        columns, rows = trial_rows(study)
        shown = [c for c in columns if c not in ("run_dir", "retry_of", "epochs_run")]
        lines.append("  " + "  ".join(shown))
        for row in rows:
            cells = []
            for c in shown:
                v = row.get(c)
                cells.append(f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v))
            lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgcap.sweep", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("status", help="trials of a study (or of every study in a storage)")
    show.add_argument("storage", help="journal file or database URL")
    show.add_argument("--study", default=None, help="study name (default: all)")
    args = parser.parse_args(argv)
    try:
        print(status(args.storage, args.study))
    except ImgcapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
