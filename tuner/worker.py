"""Workers: the loop that takes trials of one study until its study-wide budget is spent.

A worker takes a budget slot (``tuner.budget``), asks Optuna for a trial, trains it
(``tuner.objective``) and tells the result, while a heartbeat thread keeps its running trial
alive in the database and fails the trials of dead workers, so they are retried from their
checkpoint within the grace period, even if no new trial starts anywhere.

``spawn`` starts local worker processes (``tuner run --workers K``), one device each.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tuner import retry
from tuner.errors import TooManyFailures
from tuner.objective import Objective, Outcome, Runtime
from tuner.storage import Heartbeat, record_heartbeat
from tuner.study import Handle

log = logging.getLogger("tuner")


@dataclass(frozen=True)
class Event:
    """Progress of a worker, for displays: ``kind`` is started, epoch or finished."""

    kind: str
    trial: int
    epoch: int | None = None
    value: float | None = None
    state: str | None = None


@dataclass(frozen=True)
class Summary:
    trials: int
    stopped_because: str


class _HeartbeatThread(threading.Thread):
    """Says the current trial is alive, and fails other workers' stale trials, every
    ``interval`` seconds, whatever the training loop is doing."""

    def __init__(self, study: optuna.Study, interval: float):
        super().__init__(name="tuner-heartbeat", daemon=True)
        self.study, self.interval = study, interval
        self.trial: optuna.Trial | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                if (trial := self.trial) is not None:
                    record_heartbeat(self.study._storage, trial)
                optuna.storages.fail_stale_trials(self.study)
            except Exception as e:  # noqa: BLE001 - a blip must not kill the heartbeat
                log.warning("heartbeat failed: %s", e)


class Worker:
    def __init__(self, handle: Handle, runtime: Runtime, *, heartbeat: Heartbeat,
                 max_failures: int = 3, on_event: Callable[[Event], None] | None = None):
        self.handle, self.runtime = handle, runtime
        self.max_failures = max_failures
        self.on_event = on_event or (lambda e: None)
        self.heartbeat = heartbeat
        self.objective = Objective(
            handle.spec, runtime,
            on_epoch=lambda n, epoch, value: self.on_event(Event("epoch", n, epoch, value)),
        )

    def run(self) -> Summary:
        """Run trials until the budget is spent, the deadline passes or a stop is asked."""
        self.objective.preflight()
        study, budget = self.handle.study, self.handle.budget
        beat = _HeartbeatThread(study, self.heartbeat.interval)
        beat.start()
        done, failures = 0, 0
        try:
            while True:
                if self.runtime.stop.is_set():
                    return Summary(done, "stopped")
                optuna.storages.fail_stale_trials(study)
                if budget.state().expired():
                    return Summary(done, "timeout")
                trial = self._next_trial()
                if trial is None:
                    return Summary(done, "budget spent")
                record_heartbeat(study._storage, trial)
                beat.trial = trial
                self.on_event(Event("started", trial.number))
                try:
                    outcome = self.objective.run(trial)
                except KeyboardInterrupt:
                    self._tell(trial, Outcome(TrialState.FAIL, fail_reason="interrupted",
                                              interrupted=True))
                    raise
                finally:
                    beat.trial = None
                self._tell(trial, outcome)
                self.on_event(Event("finished", trial.number, value=outcome.value,
                                    state=outcome.state.name))
                done += 1
                failures = failures + 1 if outcome.state == TrialState.FAIL else 0
                if outcome.interrupted:
                    return Summary(done, "stopped")
                if failures >= self.max_failures:
                    raise TooManyFailures(
                        f"{failures} trials failed in a row (last: {outcome.fail_reason}); the "
                        f"study was stopped: fix the cause, then `tuner resume {self.handle.name}`"
                    )
        finally:
            beat.halt.set()

    def _next_trial(self) -> optuna.Trial | None:
        """A waiting trial (a retry) first; otherwise a new one if a budget slot is free."""
        study, budget = self.handle.study, self.handle.budget
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = study.ask()
            if retry.is_retry(trial) or budget.acquire():
                return trial
            # another worker took the retry we saw, and the budget is spent
            trial.set_user_attr("fail_reason", "budget spent before it started")
            study.tell(trial, state=TrialState.FAIL)
            return None
        if not budget.acquire():
            return None
        trial = study.ask()
        if retry.is_retry(trial):  # a retry appeared meanwhile: it brings its own slot
            budget.release()
        return trial

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        study = self.handle.study
        try:
            if outcome.state == TrialState.COMPLETE:
                study.tell(trial, outcome.value)
            else:
                study.tell(trial, state=outcome.state)
        except (UpdateFinishedTrialError, ValueError, RuntimeError) as e:
            # a heartbeat gap made another worker fail and retry it already
            log.warning("trial %d was finished elsewhere: %s", trial.number, e)
            return
        if outcome.state == TrialState.FAIL:
            frozen = study._storage.get_trial(trial._trial_id)
            if outcome.interrupted:
                retry.retry(study, frozen, self.handle.budget)
            else:
                self.handle.budget.release()


@contextmanager
def graceful_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM / first Ctrl-C: finish the current epoch, checkpoint, leave the trial to be
    retried, exit. A second Ctrl-C (or SIGTERM) stops at once."""

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def assign_devices(workers: int, device: str, gpus: int, per_gpu: int | None) -> list[dict[str, str]]:
    """Environment for each local worker. With GPUs and ``device`` auto/cuda, worker i gets
    GPU ``(i // per_gpu) % gpus`` through CUDA_VISIBLE_DEVICES (one GPU each by default)."""
    if gpus == 0 or device == "cpu" or device.startswith("cuda:"):
        return [{} for _ in range(workers)]
    per = per_gpu or max(1, -(-workers // gpus))
    return [{"CUDA_VISIBLE_DEVICES": str((i // per) % gpus)} for i in range(workers)]


def spawn(name: str, args: list[str], envs: list[dict[str, str]]) -> list[subprocess.Popen[bytes]]:
    """Start one ``tuner worker NAME`` process per env."""
    procs = []
    for i, env in enumerate(envs):
        cmd = [sys.executable, "-m", "tuner", "worker", name, "--worker-index", str(i), *args]
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
    return procs
