"""METEOR 1.5 in a JVM owned by each call (pycocoevalcap's jar and stdin protocol)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import tempfile
import threading

from imgcap.metrics.common import JVM_LOCALE, PYCOCOEVALCAP_DIR

__all__ = ["meteor_score"]

log = logging.getLogger(__name__)

_METEOR_JAR = PYCOCOEVALCAP_DIR / "meteor" / "meteor-1.5.jar"
# The same program and flags as pycocoevalcap's Meteor class.
_METEOR_CMD = [
    "java",
    *JVM_LOCALE,
    "-Xmx2G",
    "-jar",
    str(_METEOR_JAR),
    "-",
    "-",
    "-stdio",
    "-l",
    "en",
    "-norm",
]
_METEOR_TIMEOUT_S = 900.0


def meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """Corpus METEOR 1.5 with the same stdin protocol as pycocoevalcap's ``Meteor`` class.

    Unlike that class, the JVM is owned by this call: it is killed in ``finally`` (no reliance
    on ``__del__``, which dead-locks if scoring raised while holding its lock), stderr goes to a
    temporary file (a full pipe would block the JVM), and a watchdog kills a hung JVM so that
    ``readline`` sees EOF and the failure surfaces as an exception.

    It says what it scores before it starts: a JVM that loads paraphrase tables takes seconds
    to minutes, which would otherwise look like a hang.
    """
    log.info("scoring METEOR on %d captions (Java) ...", len(gts))
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(
            _METEOR_CMD,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err_file,
            cwd=_METEOR_JAR.parent,
        )
        watchdog = threading.Timer(_METEOR_TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            assert proc.stdin is not None and proc.stdout is not None

            def ask(line: str) -> str:
                proc.stdin.write((line + "\n").encode("utf-8"))
                proc.stdin.flush()
                return proc.stdout.readline().decode("utf-8").strip()

            try:
                stats = []
                for i in gts:
                    hyp = res[i][0].replace("|||", "").replace("  ", " ")
                    stats.append(ask(" ||| ".join(("SCORE", " ||| ".join(gts[i]), hyp))))
                proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
                proc.stdin.flush()
                for _ in gts:  # per-image scores, not needed
                    float(proc.stdout.readline().strip())
                return float(proc.stdout.readline().strip())
            except (ValueError, OSError) as exc:
                err_file.seek(0)
                tail = err_file.read().decode("utf-8", "replace").strip()[-500:]
                raise RuntimeError(f"METEOR subprocess failed: {tail or exc}") from exc
        finally:
            watchdog.cancel()
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
            proc.kill()
            proc.wait()
            with contextlib.suppress(OSError):
                proc.stdout.close()  # type: ignore[union-attr]
