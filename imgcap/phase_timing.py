"""Where a training run's wall time goes: start-up, cache build, training, validation decoding,
validation scoring, test (plus checkpointing and the rest), logged as each phase ends.

A run cut off by a time limit (a GPU lease, a cluster job) has then already said where its time
went: every line carries the running totals, and ``timings.json`` in the run directory is
rewritten with them each time. ``tasks.train`` also copies the final breakdown into
``metrics.json`` under ``timings``.

The clock is a cursor over the wall time since the process started: at any moment exactly one
phase is running, and every hook below only says which one runs next, so the phases add up to
the total. Work that the callback hooks cannot see from outside (the feature cache is built in
the data module's ``prepare_data``/``setup``) marks itself with :func:`timed_phase` (or the
decorator :func:`timed`), a no-op when no timer is active (evaluation, tests, library use).

Validation is split where the module scores: the decoding runs from ``on_validation_start`` to
the end of the last batch; the callbacks' ``on_validation_epoch_end`` hooks listed before this
one (the sample logger's pictures and overlays) are ``validation samples``; the scoring runs
from this callback's ``on_validation_epoch_end`` (Lightning calls the callbacks' before the
module's, where :class:`~imgcap.captioning_module.CaptioningModule` computes the scores) to
``on_validation_end``. Hence this callback is listed last in ``conf/callbacks/default.yaml``.
The checkpoints saved after a validation count as ``checkpointing``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from imgcap.atomic import write_json

log = logging.getLogger(__name__)

PHASES = (
    "start-up",
    "cache build",
    "training",
    "validation decoding",
    "validation samples",
    "validation scoring",
    "checkpointing",
    "test",
    "other",
)
TIMINGS_FILE = "timings.json"
T = TypeVar("T")

_active: weakref.ReferenceType[PhaseTimer] | None = None
# When the last timer of this process finished (perf_counter): a second run in the same process
# (a sweep's next trial) starts its clock there, not at the process start.
_last_finish: float | None = None


def process_start_time() -> float:
    """The wall-clock time (``time.time()``) this process started; the module's import time
    where ``/proc`` is unavailable."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5), counted after the ")" of the name
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


@contextmanager
def timed_phase(name: str, detail: str | None = None) -> Iterator[None]:
    """Count the enclosed work as phase ``name`` of the active :class:`PhaseTimer` (if any),
    and log its duration when it ends; ``detail`` names the piece (e.g. the split)."""
    timer = _active() if _active is not None else None
    if timer is None:
        yield
        return
    previous = timer.switch(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        timer.switch(previous)
        seconds = time.perf_counter() - start
        what = f"{name}{f' ({detail})' if detail else ''}"
        # The first of each kind always gets a line; a repeat (setup opening the cache that
        # prepare_data just built) only when it took a noticeable time.
        if what not in timer.reported or seconds >= 0.05:
            timer.reported.add(what)
            timer.report(what, seconds)


def timed(name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Method decorator: every call runs under ``timed_phase(name, <its first argument>)``
    (e.g. the split a feature cache is built for)."""

    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
            with timed_phase(name, str(args[0]) if args else None):
                return method(self, *args, **kwargs)

        return wrapper

    return decorate


class PhaseTimer(L.Callback):
    """Times the phases of ``train``; see the module docstring.

    Args:
        log_epochs: also log a line as each stretch of training ends (when a validation
            starts: one line per validation, however many epochs it follows) and as each
            validation ends; otherwise only at the end of start-up, cache builds, fit and test.
            ``timings.json`` is rewritten after every epoch either way.
    """

    def __init__(self, log_epochs: bool = True) -> None:
        global _active
        self.log_epochs = log_epochs
        now_wall, now = time.time(), time.perf_counter()
        # perf_counter is monotonic; the process start is placed on its scale once.
        self._origin = now - max(0.0, now_wall - process_start_time())
        if _last_finish is not None:
            self._origin = max(self._origin, _last_finish)
        self.totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.phase = "start-up"
        self._since = self._origin
        self._resume_phase = "training"
        self._validation_marks: dict[str, float] = {}
        self._epochs = 0
        self._reported_training = 0.0  # the training seconds already in a line
        self._first_unreported_epoch = 0
        self._validations = 0
        self.reported: set[str] = set()  # timed_phase pieces already logged
        self._cuda = False
        self._write_dir: Path | None = None
        # Until setup says it, from the launcher's environment: under DDP the other ranks
        # open the cache (a timed phase) before any hook runs.
        self._rank_zero = rank_zero_only.rank == 0
        _active = weakref.ref(self)  # the latest timer built is the one that counts

    # ------------------------------------------------------------------ the clock
    def switch(self, phase: str, at: float | None = None) -> str:
        """End the running phase now (or at the earlier ``perf_counter`` time ``at``) and start
        ``phase``; returns the phase that was running."""
        if self._cuda and at is None:  # queued GPU work belongs to the phase that queued it
            torch.cuda.synchronize()
        now = time.perf_counter() if at is None else at
        self.totals[self.phase] = self.totals.get(self.phase, 0.0) + now - self._since
        previous, self.phase, self._since = self.phase, phase, now
        return previous

    def elapsed(self) -> float:
        return time.perf_counter() - self._origin

    def breakdown(self) -> dict[str, Any]:
        """Seconds per phase so far (the running one up to now), the total, and counts."""
        running = dict(self.totals)
        running[self.phase] = running.get(self.phase, 0.0) + time.perf_counter() - self._since
        return {
            "seconds": {k: round(v, 3) for k, v in running.items()},
            "total_seconds": round(self.elapsed(), 3),
            "epochs": self._epochs,
            "validations": self._validations,
        }

    def report(self, what: str, seconds: float) -> None:
        """One line (``what`` took ``seconds``; the totals so far) and ``timings.json``."""
        if not self._rank_zero:
            return
        totals = self.breakdown()
        shown = ", ".join(f"{k} {v:.1f}" for k, v in totals["seconds"].items() if v >= 0.05)
        log.info("time: %s %.2f s | at %.1f s: %s", what, seconds, totals["total_seconds"], shown)
        self._write(totals)

    def finish(self) -> dict[str, Any]:
        """Close the running phase, log and write the final breakdown, and return it. The
        timer stops counting work marked with :func:`timed_phase`."""
        global _active, _last_finish
        self.switch("other")
        totals = self.breakdown()
        _last_finish = time.perf_counter()
        if _active is not None and _active() is self:
            _active = None
        if self._rank_zero:
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in totals["seconds"].items())
            log.info("time: total %.1f s: %s", totals["total_seconds"], parts)
            self._write(totals)
        return totals

    def _write(self, totals: dict[str, Any]) -> None:
        if self._write_dir is None:
            return
        path = self._write_dir / TIMINGS_FILE
        try:
            write_json(path, totals)  # whole or not at all, no temp file left
        except OSError as e:  # timing is a report, never a reason to stop training
            log.warning("cannot write %s (%s)", path, e)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank_zero = trainer.is_global_zero
        self._write_dir = Path(trainer.default_root_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cuda = pl_module.device.type == "cuda"
        # start-up: from the process start, less any cache build (its own phase)
        self.switch("training")
        self.report("start-up", self.totals["start-up"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_unreported_epoch = trainer.current_epoch  # a resumed run's first epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.switch("training")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.phase == "checkpointing":  # a validation inside the epoch, then more batches
            self.switch("training")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epochs += 1
        if self.phase == "checkpointing":
            self.switch("training")
        if self._rank_zero:  # no line (the next validation's says it), but a fresh file
            self._write(self.breakdown())

    def _report_training(self, last: int) -> None:
        """One line for the training since the last one (epochs ``first..last``)."""
        spent = self.totals["training"] - self._reported_training
        first = self._first_unreported_epoch
        if spent <= 0 or last < first:
            return
        self._reported_training = self.totals["training"]
        self._first_unreported_epoch = last + 1
        epochs = f"epoch {last}" if first == last else f"epochs {first}-{last}"
        self.report(f"training {epochs}", spent)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resume_phase = self.switch("validation decoding")
        self._validation_marks = {"start": time.perf_counter()}
        if self.log_epochs and not trainer.sanity_checking:  # a stretch of training ended
            self._report_training(trainer.current_epoch)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Decoding ends with the last batch; what the callbacks listed before this one do at
        # the epoch's end (the sample logger's pictures) is "validation samples".
        self._validation_marks["last_batch"] = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        marks = self._validation_marks
        if "last_batch" in marks and marks["last_batch"] >= self._since:
            self.switch("validation samples", at=marks["last_batch"])
        marks["samples"] = marks.get("last_batch", time.perf_counter())
        self.switch("validation scoring")
        marks["scoring"] = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sanity = trainer.sanity_checking
        self.switch(self._resume_phase if sanity else "checkpointing")
        self._validations += not sanity
        marks, now = self._validation_marks, time.perf_counter()
        scoring = marks.get("scoring", now)
        samples = marks.get("samples", scoring)
        if self.log_epochs:
            name = "sanity check" if sanity else f"validation {self._validations}"
            self.report(
                f"{name} decoding {samples - marks['start']:.2f} s, samples "
                f"{scoring - samples:.2f} s, scoring",
                now - scoring,
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.switch("other")
        if self.log_epochs:  # epochs after the last validation (the counter is past the last)
            self._report_training(trainer.current_epoch - 1)
        self.report(f"fit ({self._epochs} epochs): training", self.totals["training"])

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cuda = pl_module.device.type == "cuda"
        self.switch("test")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = self._since
        self.switch("other")
        self.report("test", time.perf_counter() - start)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Interrupted (a signal, Ctrl-C, a crash): say where the time went up to here.
        self.finish()


def find_phase_timer(trainer: L.Trainer) -> PhaseTimer | None:
    """The trainer's :class:`PhaseTimer`, if the run has one."""
    return next((c for c in trainer.callbacks if isinstance(c, PhaseTimer)), None)
