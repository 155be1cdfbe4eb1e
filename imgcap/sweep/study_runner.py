"""Drive one study: hand trials to workers until ``n_trials`` are finished, in any number of
sweep processes sharing the storage.

* **Counting.** A trial is finished when it is complete, pruned, or failed on its own (a run
  that diverged is a result too, and the sweep goes on). Trials that were *interrupted* (the
  sweep was stopped or killed) do not count: they are retried. A new trial starts only while
  finished + running + queued < ``n_trials``, so rerunning the same command continues the study
  up to ``n_trials`` in total and several processes on several machines share the work.
* **Ownership.** Each running trial carries its sweep process (``owner``: host and pid) and a
  ``heartbeat`` time the process refreshes. A running trial whose owner is gone (same host, no
  such process) or silent for ``stale_after`` seconds was killed with its sweep: it is marked
  failed-and-interrupted and re-queued with the same parameters. Only the process whose
  state change wins re-queues it (the storage refuses a second change of a finished trial), and
  a queued trial is taken by exactly one process, so no trial runs twice.
* **Resume.** A re-queued trial carries its run's newest checkpoint (``last.ckpt`` or
  ``on_exception.ckpt``): the retry continues that run in its own directory.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from imgcap.run.trial_link import ATTR_PRUNED_AT, ATTR_RUN_DIR
from imgcap.sweep.space import SearchSpace
from imgcap.sweep.workers import FAILED, INTERRUPTED, OK, Outcome, Slot, WorkerPool

log = logging.getLogger(__name__)

ATTR_OWNER = "owner"
ATTR_HEARTBEAT = "heartbeat"
ATTR_INTERRUPTED = "interrupted"
ATTR_RETRY_OF = "retry_of"
ATTR_RESUME_FROM = "resume_from"
ATTR_ERROR = "error"

RESUMABLE_CHECKPOINTS = ("last.ckpt", "on_exception.ckpt")


@dataclass
class TrialJob:
    """One trial handed to a worker."""

    number: int
    params: dict[str, Any]
    overrides: list[str]
    env: dict[str, str]
    run_dir: str | None = None
    resume_from: str | None = None
    started: float = field(default_factory=time.time)
    payload: Any = None  # what the worker needs to run it (the composed job config)


def this_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str | None) -> bool:
    """True when ``owner`` (host:pid) is a process of this host that no longer exists."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def newest_checkpoint(run_dir: str | None) -> str | None:
    """The checkpoint a retried trial resumes from: the newest of its run's resumable ones."""
    if not run_dir:
        return None
    folder = Path(run_dir) / "checkpoints"
    found = [folder / name for name in RESUMABLE_CHECKPOINTS if (folder / name).is_file()]
    if not found:
        return None
    return str(max(found, key=lambda p: p.stat().st_mtime))


def is_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete, pruned, or failed on its own (not interrupted)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(ATTR_INTERRUPTED)


class SweepInterrupted(Exception):
    """The sweep was stopped by a signal; its running trials are marked and re-queued."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StudyRunner:
    """Run trials of ``study`` with ``make_job`` (trial -> TrialJob) and ``pool``-like workers.

    ``on_trial_done`` is called after each trial is told (the sweeper rewrites its results
    files there, so they are current while a long sweep runs).
    """

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        n_trials: int,
        make_job: Callable[[optuna.Trial], TrialJob],
        timeout: float | None = None,
        heartbeat_interval: float = 30.0,
        stale_after: float = 180.0,
        on_trial_done: Callable[[], None] | None = None,
    ) -> None:
        self.study = study
        self.space = space
        self.n_trials = int(n_trials)
        self.make_job = make_job
        self.timeout = timeout
        self.heartbeat_interval = float(heartbeat_interval)
        self.stale_after = float(stale_after)
        self.on_trial_done = on_trial_done or (lambda: None)
        self.owner = this_owner()
        self.mine: dict[int, TrialJob] = {}
        self._trial_ids: dict[int, int] = {}
        self._started = time.monotonic()
        self._last_beat = 0.0
        self._stop_signal: int | None = None
        self._pool: WorkerPool | None = None
        self._forwarded = False
        self.ran: list[int] = []  # trial numbers this process ran (for tests and logs)

    # ------------------------------------------------------------------ storage bookkeeping
    def _trials(self, states: tuple[TrialState, ...] | None = None) -> list:
        return self.study.get_trials(deepcopy=False, states=states)

    def counts(self) -> tuple[int, int, int]:
        """(finished, running, waiting) trials in the storage, all processes together."""
        finished = running = waiting = 0
        for trial in self._trials():
            if is_finished(trial):
                finished += 1
            elif trial.state == TrialState.RUNNING:
                running += 1
            elif trial.state == TrialState.WAITING:
                waiting += 1
        return finished, running, waiting

    def time_is_up(self) -> bool:
        return self.timeout is not None and time.monotonic() - self._started >= self.timeout

    def can_start(self) -> bool:
        if self._stop_signal is not None or self.time_is_up():
            return False
        finished, running, waiting = self.counts()
        return finished + running < self.n_trials and (
            waiting > 0 or finished + running + waiting < self.n_trials
        )

    def _set(self, number: int, key: str, value: Any) -> None:
        self.study._storage.set_trial_user_attr(self._trial_id(number), key, value)

    def _trial_id(self, number: int) -> int:
        if number not in self._trial_ids:
            self._trial_ids[number] = self.study._storage.get_trial_id_from_study_id_trial_number(
                self.study._study_id, number
            )
        return self._trial_ids[number]

    def beat(self, force: bool = False) -> None:
        """Refresh the heartbeat of this process's running trials."""
        now = time.time()
        if not force and now - self._last_beat < self.heartbeat_interval:
            return
        self._last_beat = now
        for number in list(self.mine):
            try:
                self._set(number, ATTR_HEARTBEAT, now)
            except Exception as err:  # noqa: BLE001 - finished meanwhile, or storage hiccup
                log.debug("heartbeat of trial %d: %s", number, err)

    # ------------------------------------------------------------------ retries
    def requeue(self, trial: optuna.trial.FrozenTrial, run_dir: str | None, reason: str) -> bool:
        """Mark a running trial failed-and-interrupted and queue a retry of it; False when
        another process did it first (or the trial finished meanwhile)."""
        trial_id = self._trial_id(trial.number)
        storage = self.study._storage
        try:
            storage.set_trial_user_attr(trial_id, ATTR_INTERRUPTED, reason)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                return False
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            return False
        self._enqueue_retry(trial, run_dir)
        return True

    def _enqueue_retry(self, trial: optuna.trial.FrozenTrial, run_dir: str | None) -> None:
        run_dir = run_dir or trial.user_attrs.get(ATTR_RUN_DIR)
        checkpoint = newest_checkpoint(run_dir)
        attrs: dict[str, Any] = {ATTR_RETRY_OF: trial.number}
        if checkpoint:
            attrs[ATTR_RESUME_FROM] = checkpoint
            attrs[ATTR_RUN_DIR] = run_dir
        self.study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
        log.info(
            "trial %d was interrupted: queued again%s",
            trial.number,
            f", resuming from {checkpoint}" if checkpoint else " (no checkpoint: from the start)",
        )

    def reclaim(self, at_start: bool = False) -> None:
        """Re-queue trials whose sweep process is gone; at start, also interrupted trials that
        were never re-queued (a sweep killed between the two steps)."""
        now = time.time()
        trials = self._trials()
        retried = {t.user_attrs.get(ATTR_RETRY_OF) for t in trials}
        for trial in trials:
            if trial.state == TrialState.RUNNING and trial.number not in self.mine:
                owner = trial.user_attrs.get(ATTR_OWNER)
                start = trial.datetime_start.timestamp() if trial.datetime_start else now
                beat = float(trial.user_attrs.get(ATTR_HEARTBEAT, start))
                if owner_is_gone(owner):
                    self.requeue(trial, None, f"its sweep process {owner} is gone")
                elif now - beat > self.stale_after:
                    self.requeue(trial, None, f"no heartbeat for {now - beat:.0f} s")
            elif (
                at_start
                and trial.state == TrialState.FAIL
                and trial.user_attrs.get(ATTR_INTERRUPTED)
                and trial.number not in retried
            ):
                self._enqueue_retry(trial, None)

    # ------------------------------------------------------------------ one trial
    def next_job(self) -> TrialJob:
        trial = self.study.ask(self.space.distributions)
        self._trial_ids[trial.number] = trial._trial_id
        trial.set_user_attr(ATTR_OWNER, self.owner)
        trial.set_user_attr(ATTR_HEARTBEAT, time.time())
        job = self.make_job(trial)
        if job.run_dir:
            trial.set_user_attr(ATTR_RUN_DIR, job.run_dir)
        self.mine[trial.number] = job
        self.ran.append(trial.number)
        shown = ", ".join(f"{k}={v}" for k, v in job.params.items())
        retry = trial.user_attrs.get(ATTR_RETRY_OF)
        log.info(
            "trial %d: %s%s",
            trial.number,
            shown or "(no parameters)",
            f" (retry of trial {retry})" if retry is not None else "",
        )
        return job

    def finish(self, job: TrialJob, outcome: Outcome) -> None:
        """Tell the study how a trial ended."""
        number = job.number
        self.mine.pop(number, None)
        frozen = self.study._storage.get_trial(self._trial_id(number))
        if outcome.kind == INTERRUPTED:
            run_dir = frozen.user_attrs.get(ATTR_RUN_DIR) or job.run_dir
            self.requeue(frozen, run_dir, f"stopped by signal (exit {outcome.value})")
            return
        if outcome.kind == FAILED:
            self._set(number, ATTR_ERROR, str(outcome.value)[:500])
            self.study.tell(number, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", number, outcome.value)
        elif frozen.user_attrs.get(ATTR_PRUNED_AT) is not None:
            self.study.tell(number, state=TrialState.PRUNED)
            log.info("trial %d pruned at epoch %s", number, frozen.user_attrs[ATTR_PRUNED_AT])
        else:
            value = outcome.value
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                self._set(number, ATTR_ERROR, f"the objective is {value!r}, not a finite number")
                self.study.tell(number, state=TrialState.FAIL)
                log.warning("trial %d failed: its objective is %r", number, value)
            else:
                self.study.tell(number, float(value))
                log.info("trial %d: %s", number, value)
        self.on_trial_done()

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is None:
            log.warning(
                "%s: stopping the sweep; running trials save a checkpoint and are queued again",
                signal.Signals(signum).name,
            )
        self._stop_signal = signum
        # Pass SIGTERM on at once: the loop may sit in a wait of up to 5 s, long enough for a
        # short trial to finish and be counted complete although the sweep was stopped.
        if self._pool is not None and not self._forwarded:
            self._forwarded = True
            self._pool.signal_all(signal.SIGTERM)

    def run(self, slots: list[Slot], run_job: Callable[[TrialJob], Any]) -> None:
        """Keep every slot busy until the study has ``n_trials`` finished trials (or the
        timeout passes); raises :class:`SweepInterrupted` after SIGTERM/SIGINT, with the
        storage consistent (interrupted trials failed and queued again)."""
        pool = WorkerPool(run_job, slots)
        self._pool, self._forwarded = pool, False
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self.reclaim(at_start=True)
            while True:
                if self._stop_signal is not None and not self._forwarded:
                    # A terminal's Ctrl-C reached the workers already; SIGTERM must be passed on.
                    pool.signal_all(signal.SIGTERM)
                    self._forwarded = True
                while pool.free_slots and self.can_start():
                    pool.start(self.next_job(), pool.free_slots[0])
                if not pool.busy:
                    break
                for job, outcome in pool.wait(timeout=min(self.heartbeat_interval, 5.0)):
                    self.finish(job, outcome)
                self.beat()
                if time.time() - self._last_beat < 1.0:  # reclaim as often as we beat
                    self.reclaim()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._pool = None
        if self._stop_signal is not None:
            raise SweepInterrupted(self._stop_signal)
        if self.time_is_up():
            log.info("hydra.sweeper.timeout=%s s reached: no new trials started", self.timeout)

    def run_batches(
        self, batch_size: int, launch: Callable[[list[TrialJob]], list[Outcome]]
    ) -> None:
        """For a Hydra launcher (SLURM...), which takes a batch at a time: start up to
        ``batch_size`` trials, wait for the whole batch, repeat. A thread keeps the heartbeat."""
        stop = threading.Event()

        def keep_beating() -> None:
            while not stop.wait(self.heartbeat_interval):
                self.beat(force=True)

        beater = threading.Thread(target=keep_beating, daemon=True)
        beater.start()
        try:
            self.reclaim(at_start=True)
            while self.can_start():
                jobs = []
                while len(jobs) < batch_size and self.can_start():
                    jobs.append(self.next_job())
                try:
                    outcomes = launch(jobs)
                except KeyboardInterrupt:
                    for job in jobs:
                        self.finish(job, Outcome(INTERRUPTED, 128 + signal.SIGINT))
                    raise SweepInterrupted(signal.SIGINT) from None
                for job, outcome in zip(jobs, outcomes, strict=True):
                    self.finish(job, outcome)
        finally:
            stop.set()
        if self.time_is_up():
            log.info("hydra.sweeper.timeout=%s s reached: no new trials started", self.timeout)


__all__ = ["OK", "FAILED", "INTERRUPTED", "StudyRunner", "TrialJob", "SweepInterrupted"]
