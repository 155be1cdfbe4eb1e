"""Worker processes for trials on one machine: a slot frees up, the next trial starts there.

Each trial runs in a forked child process (the task function needs no pickling, and a crash or
an out-of-memory kill of one trial leaves the sweep alive). With GPUs, slot ``k`` gets GPU
``k % n_gpus`` through ``CUDA_VISIBLE_DEVICES`` (``trials_per_gpu`` slots share a GPU); on CPUs
each worker gets its share of the cores, so two trials do not fight over every core.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Outcome kinds sent back by a worker.
OK, FAILED, INTERRUPTED = "ok", "failed", "interrupted"
_INTERRUPT_CODES = {128 + signal.SIGTERM, 128 + signal.SIGINT}


@dataclass
class Outcome:
    kind: str  # OK, FAILED or INTERRUPTED
    value: Any = None  # the objective (OK), a one-line reason (FAILED), the exit code (INTERRUPTED)


@dataclass
class Slot:
    index: int
    gpu: str | None = None  # the CUDA_VISIBLE_DEVICES of this slot's trials
    threads: int | None = None  # torch threads for a CPU trial


@dataclass
class _Running:
    job: Any
    slot: Slot
    process: Any
    conn: Any
    outcome: Outcome | None = field(default=None)


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every GPU found
    (counted without initialising CUDA in this process, which forked workers then could not)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    if "torch" in sys.modules:  # train.py has it: NVML-based, no CUDA context is created
        count = sys.modules["torch"].cuda.device_count()
    else:  # no need to import torch just to count (the driver lists its GPUs here)
        gpus = Path("/proc/driver/nvidia/gpus")
        count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    return [str(i) for i in range(count)]


def plan_slots(n_jobs: int, trials_per_gpu: int = 1, gpus: list[str] | None = None) -> list[Slot]:
    """``n_jobs`` worker slots, GPUs assigned round-robin, at most ``trials_per_gpu`` per GPU."""
    gpus = visible_gpus() if gpus is None else gpus
    n_jobs = max(1, int(n_jobs))
    if gpus:
        capacity = len(gpus) * max(1, int(trials_per_gpu))
        if n_jobs > capacity:
            log.warning(
                "n_jobs=%d but %d GPU(s) x trials_per_gpu=%d: running %d trials at a time",
                n_jobs,
                len(gpus),
                trials_per_gpu,
                capacity,
            )
            n_jobs = capacity
        return [Slot(k, gpu=gpus[k % len(gpus)]) for k in range(n_jobs)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // n_jobs)
    return [Slot(k, threads=threads if n_jobs > 1 else None) for k in range(n_jobs)]


def _child_main(run: Callable[[Any], Any], job: Any, slot: Slot, conn: Any) -> None:
    """In the forked worker: run one trial, send its outcome, exit without the parent's
    exit handlers."""
    # The parent's handlers (stop the sweep) must not run here; training installs its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if slot.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu
        cuda = getattr(sys.modules.get("torch"), "cuda", None)
        if cuda is not None and hasattr(cuda, "_cached_device_count"):
            cuda._cached_device_count = None  # the parent counted every GPU; this one sees one
    if slot.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(slot.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(slot.threads)
    outcome: Outcome
    try:
        outcome = Outcome(OK, run(job))
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
        if code in _INTERRUPT_CODES:
            outcome = Outcome(INTERRUPTED, code)
        elif code == 0:
            outcome = Outcome(FAILED, "the job exited without a result")
        else:
            outcome = Outcome(FAILED, f"exit status {code} (its error is printed above)")
    except KeyboardInterrupt:
        outcome = Outcome(INTERRUPTED, 128 + signal.SIGINT)
    except BaseException as err:  # noqa: BLE001 - any failure of one trial is that trial's
        text = str(err).strip().splitlines()
        outcome = Outcome(FAILED, f"{type(err).__name__}: {text[-1] if text else ''}")
    try:
        conn.send(outcome)
    except Exception:  # noqa: BLE001 - e.g. an unpicklable value
        conn.send(Outcome(FAILED, f"the result {outcome.value!r} cannot be sent back"))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    logging.shutdown()
    os._exit(0)


class WorkerPool:
    """Run jobs in forked processes, one per free slot; collect outcomes as they finish."""

    def __init__(self, run: Callable[[Any], Any], slots: list[Slot]) -> None:
        self.run = run
        self.slots = slots
        self._running: list[_Running] = []
        self._context = multiprocessing.get_context("fork")

    @property
    def free_slots(self) -> list[Slot]:
        busy = {r.slot.index for r in self._running}
        return [s for s in self.slots if s.index not in busy]

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def jobs(self) -> list[Any]:
        return [r.job for r in self._running]

    def start(self, job: Any, slot: Slot) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child_main, args=(self.run, job, slot, send), daemon=False
        )
        process.start()
        send.close()
        self._running.append(_Running(job, slot, process, receive))

    def wait(self, timeout: float | None) -> list[tuple[Any, Outcome]]:
        """Block until at least one worker ends (or ``timeout``); its job and outcome."""
        if not self._running:
            return []
        sentinels = [r.process.sentinel for r in self._running]
        multiprocessing.connection.wait(sentinels, timeout=timeout)
        done = []
        for running in list(self._running):
            if running.conn.poll():
                try:
                    running.outcome = running.conn.recv()
                except EOFError:
                    pass
            if running.process.is_alive():
                continue
            running.process.join()
            outcome = running.outcome or self._lost(running.process.exitcode)
            running.conn.close()
            self._running.remove(running)
            done.append((running.job, outcome))
        return done

    @staticmethod
    def _lost(exitcode: int | None) -> Outcome:
        if exitcode is not None and exitcode < 0:
            signum = -exitcode
            if signum in (signal.SIGTERM, signal.SIGINT):
                return Outcome(INTERRUPTED, 128 + signum)
            return Outcome(FAILED, f"the worker was killed by {signal.Signals(signum).name}")
        return Outcome(FAILED, f"the worker ended with exit code {exitcode} and no result")

    def signal_all(self, signum: int) -> None:
        for running in self._running:
            if running.process.is_alive():
                try:
                    os.kill(running.process.pid, signum)
                except ProcessLookupError:
                    pass
