"""Workers: the loop that takes trials of one study until its study-wide budget is spent.

A worker takes a budget slot (``tuner.budget``), asks Optuna for a trial, trains it
(``tuner.objective``) and tells the result, while a heartbeat thread keeps its running trial
alive in the database and fails the trials of dead workers, so they are retried from their
checkpoint within the grace period, even if no new trial starts anywhere. A worker whose
budget is spent stays while other workers' trials run, to retry them if their worker dies.

Stopping: SIGTERM or a first Ctrl-C lets the current epoch finish and checkpoint; the trial
is failed and queued again as a retry (same params, continuing from the checkpoint) and the
worker exits with status 0, since nothing is lost and a supervisor (Docker, systemd) should
not restart it. A second signal stops at once (``KeyboardInterrupt``; the CLI exits 130),
still queueing the retry from the last checkpoint.

``spawn`` starts local worker processes (``tuner run --workers K``), one device each.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tuner import retry
from tuner.errors import TooManyFailures, TunerError
from tuner.objective import Objective, Outcome, Runtime
from tuner.storage import Heartbeat, heartbeat_ages, record_heartbeat
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


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating; ``tuner.retry`` queues their retries."""
    with warnings.catch_warnings():  # Optuna calls this experimental, every call
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


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
                fail_stale_trials(self.study)
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
        """Run trials until the budget is spent, the deadline passes or a stop is asked.

        With the budget spent, a worker stays while other workers' trials run (polling every
        heartbeat interval): if one of them dies, its retry still needs a worker."""
        self.objective.preflight()
        study = self.handle.study
        beat = _HeartbeatThread(study, self.heartbeat.interval)
        beat.start()
        done, failures = 0, 0
        try:
            fail_stale_trials(study)  # dead workers' trials first
            while True:
                if self.runtime.stop.is_set():
                    return Summary(done, "stopped")
                trial = self._next_trial()
                if trial is None:
                    if (why := self._why_idle()) is not None:
                        return Summary(done, why)
                    self.runtime.stop.wait(self.heartbeat.interval)
                    fail_stale_trials(study)
                    continue
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
                if not self._tell(trial, outcome):
                    continue  # another worker failed and retried it meanwhile
                self.objective.cleanup(outcome)
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
        """A waiting trial first (a retry runs in its failed trial's slot; a trial enqueued by
        hand needs a slot); otherwise a new trial if a budget slot is free."""
        study, budget = self.handle.study, self.handle.budget
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting and budget.state().expired():
            return None
        for t in waiting:
            own_slot = retry.is_retry(t)
            if not own_slot and not budget.acquire():
                return None  # budget spent: enqueued trials wait for `tuner run --trials`
            if _claim(study, t):
                return optuna.Trial(study, t._trial_id)
            if not own_slot:
                budget.release()  # another worker took it first
        if not budget.acquire():
            return None
        with warnings.catch_warnings():  # "heartbeats are for Study.optimize": not here
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        if retry.is_retry(trial):  # a retry appeared meanwhile: it brings its own slot
            budget.release()
        return trial

    def _why_idle(self) -> str | None:
        """Why this worker may stop now that it found no trial to run; None: wait, other
        workers' trials are still running (and would be retried here if their worker died)."""
        if self.handle.budget.state().expired():
            return "timeout"
        study = self.handle.study
        rdb = getattr(study._storage, "_backend", study._storage)
        if heartbeat_ages(rdb, study._study_id):
            return None
        return "budget spent"

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> bool:
        """Record the outcome; False if the trial had been finished by another worker (its
        heartbeat went silent for a grace period, so it was failed and retried there)."""
        study = self.handle.study
        try:
            if outcome.state == TrialState.COMPLETE:
                study.tell(trial, outcome.value)
            else:
                study.tell(trial, state=outcome.state)
        except (UpdateFinishedTrialError, ValueError) as e:
            if not study._storage.get_trial(trial._trial_id).state.is_finished():
                raise
            log.warning("trial %d was failed and retried by another worker meanwhile (%s)",
                        trial.number, e)
            return False
        if outcome.state == TrialState.FAIL:
            frozen = study._storage.get_trial(trial._trial_id)
            if outcome.interrupted:
                retry.retry(study, frozen, self.handle.budget, crashed=False)
            else:
                self.handle.budget.release()
        return True


def _claim(study: optuna.Study, waiting: FrozenTrial) -> bool:
    """Move a WAITING trial to RUNNING unless another worker took it first (atomic in the
    storage: a row lock on PostgreSQL/MySQL, BEGIN IMMEDIATE on SQLite)."""
    try:
        return study._storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING)
    except UpdateFinishedTrialError:
        return False


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


def assign_devices(workers: int, device: str, gpus: int,
                   per_gpu: int | None) -> list[dict[str, str]]:
    """Environment for each local worker. With GPUs and ``device`` auto/cuda, worker i gets
    GPU ``i // per_gpu`` through CUDA_VISIBLE_DEVICES; by default the workers are spread
    evenly, ``ceil(workers / gpus)`` per GPU (one GPU each when workers <= gpus)."""
    if gpus == 0 or device == "cpu" or device.startswith("cuda:"):
        return [{} for _ in range(workers)]
    per = per_gpu or -(-workers // gpus)
    if workers > per * gpus:
        raise TunerError(
            f"--workers {workers} with --workers-per-gpu {per} needs {-(-workers // per)} GPUs "
            f"but {gpus} are visible; lower --workers or raise --workers-per-gpu"
        )
    return [{"CUDA_VISIBLE_DEVICES": str(i // per)} for i in range(workers)]


def _visible_device(index: str, parent: str | None) -> str:
    """GPU ``index`` as counted by this process -> its name in the parent's
    CUDA_VISIBLE_DEVICES (``"2,3"``: GPU 1 here is GPU 3 of the machine)."""
    if not parent:
        return index
    names = [d.strip() for d in parent.split(",") if d.strip()]
    return names[int(index)] if int(index) < len(names) else index


def spawn(name: str, args: list[str], envs: list[dict[str, str]]) -> list[subprocess.Popen[bytes]]:
    """Start one ``tuner worker NAME`` process per env."""
    procs = []
    parent_gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    for i, env in enumerate(envs):
        env = dict(env)
        if "CUDA_VISIBLE_DEVICES" in env:
            env["CUDA_VISIBLE_DEVICES"] = _visible_device(env["CUDA_VISIBLE_DEVICES"], parent_gpus)
        cmd = [sys.executable, "-m", "tuner", "worker", name, "--worker-index", str(i), *args]
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
    return procs
