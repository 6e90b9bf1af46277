"""A worker: the loop that takes trials of one study until its study-wide budget is spent.

A worker takes a budget slot (:class:`tuner.storage.Budget`), asks Optuna for a trial, trains
it (:class:`tuner.trials.TrialRunner`) and tells the result, while a heartbeat thread
keeps its running trial alive in the database and fails the trials of dead workers, so they
are retried from their checkpoint within the grace period, even if no new trial starts
anywhere. A worker whose budget is spent stays while other workers' trials run, to retry
them if their worker dies.

Stopping: SIGTERM or a first Ctrl-C lets the current epoch finish and checkpoint; the trial
is failed and queued again as a retry (same params, continuing from the checkpoint) and the
worker returns "stopped", since nothing is lost and a supervisor (Docker, systemd) should
not restart it. A second signal stops at once (``KeyboardInterrupt``; the CLI exits 130),
still queueing the retry from the last checkpoint.

Controls (:mod:`tuner.results.controls`: ``tuner stop``, ``pause``, ``stop-trial``, or the console)
come through the database: the heartbeat thread reads them each beat, and the loop before
each trial. A stop acts as SIGTERM does (and the worker returns "stopped", exit code 0); a
pause keeps the worker, taking nothing new; a trial asked to stop ends at its next epoch.

Launching workers (local processes, Slurm, Kubernetes) is elsewhere (:mod:`tuner.runtime.local`);
which trial a worker takes next, and whether one with nothing to take may stop, is
:mod:`tuner.runtime.acquire`; how it tells their outcomes, :mod:`tuner.runtime.tell`.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tuner import storage
from tuner.errors import DeviceBroken, TooManyFailures, TrialStalled
from tuner.runtime import acquire, stopping, tell
from tuner.study import Handle
from tuner.trials import Outcome, TrialRunner

log = logging.getLogger("tuner")


@dataclass(frozen=True)
class Event:
    """Progress of a worker, for displays: ``kind`` is started, epoch or finished; a finished
    ``state`` is a TrialState's name, or PAUSED for an ASHA/PBT segment that waits to go on."""

    kind: str
    trial: int
    epoch: int | None = None
    value: float | None = None
    state: str | None = None


@dataclass(frozen=True)
class Summary:
    trials: int
    stopped_because: str


# how often a worker with nothing to take looks again while others' trials run: the study
# ends (or a retry appears) within this, not a whole heartbeat interval later
IDLE_POLL_S = 1.0


class Worker:
    def __init__(self, handle: Handle, runner: TrialRunner, *, heartbeat: storage.Heartbeat,
                 max_failures: int = 3, on_event: Callable[[Event], None] | None = None,
                 db_patience: float = 300, stall_timeout: float | None = None,
                 between_epochs: Callable[[], None] | None = None,
                 on_stall: Callable[[TrialStalled], None] | None = None):
        self.handle, self.runner = handle, runner
        self.on_stall = on_stall  # the entry point's: a hung trial's process exits
        # one per worker: the trial loop, its reports and the heartbeat thread ride out the
        # same outages (backoff capped at the heartbeat interval, so beats resume promptly)
        self.patience = storage.Patience(db_patience, heartbeat.grace_period,
                                         cap=heartbeat.interval)
        runner.patience = self.patience
        self.stop = runner.stop
        self.max_failures = max_failures
        self.on_event = on_event or (lambda e: None)
        self.heartbeat = heartbeat
        self.stall_timeout = stall_timeout
        self.beat: storage.HeartbeatThread | None = None
        self.paused = False

        def on_epoch(n: int, epoch: int, value: float) -> None:
            if between_epochs is not None:  # e.g. fewer threads while the CPUs are contended
                between_epochs()
            if self.beat is not None:
                self.beat.progressed()
            self.on_event(Event("epoch", n, epoch, value))

        runner.on_epoch = on_epoch

    def run(self) -> Summary:
        """Run trials until the budget is spent, the deadline passes or a stop is asked.

        With the budget spent, a worker stays while other workers' trials run (polling every
        heartbeat interval): if one of them dies, its retry still needs a worker."""
        self.runner.assets.preflight()
        self.runner.fuse_size()  # fuse: auto times its K here, before any trial is taken
        study = self.handle.study
        p = self.patience
        # one reaper per study: the lease outlives two missed beats, then passes on
        lease = storage.Lease(storage.engine_of(study), f"reaper:{self.handle.name}",
                              2 * self.heartbeat.interval + 1)
        me = storage.WorkerRow(lease.holder, platform.node(), os.getpid(),
                               self.runner.assets.device, None, 0.0)
        beat = self.beat = storage.HeartbeatThread(study, self.heartbeat.interval, p, lease,
                                                   self.stall_timeout, self._stalled,
                                                   self._obey, me)
        beat.start()
        done, failures = 0, 0
        try:
            storage.reap(study, p, lease)  # dead workers' trials first
            reaped = time.monotonic()
            while True:
                self._obey(p.call(lambda: storage.check_in(storage.engine_of(study),
                                                            self.handle.name, me)))
                if self.stop.is_set():
                    return Summary(done, "stopped")
                if self.paused:  # take nothing new; running trials (elsewhere) go on
                    self.stop.wait(self.heartbeat.interval)
                    storage.reap(study, p, lease)
                    continue
                trial = self._next_trial()
                if trial is None:
                    if (why := self._why_idle()) is not None:
                        # ASHA: the study cannot grow; each rung's top rounds up, then the rest go
                        # (PBT: the last generation is decided)
                        if self.patience.call(lambda: self.handle.promote(final=True)):
                            continue
                        if self.patience.call(self.handle.pending):
                            # PBT: another worker is enqueueing a generation's continuations
                            self.stop.wait(min(1.0, self.heartbeat.interval))
                            continue
                        for lin in self.patience.call(self.handle.retire):
                            self.runner.drop_checkpoint(lin)
                        if self.handle.schedule.keeps_snapshots and not self.patience.call(
                                lambda: study.get_trials(deepcopy=False, states=(
                                    TrialState.RUNNING, TrialState.WAITING))):
                            self.runner.drop_snapshots()  # PBT: no member can exploit any more
                        return Summary(done, why)
                    # others' trials run: look again soon (the study may end, or a retry
                    # wait), and reap at the heartbeat's pace
                    self.stop.wait(min(IDLE_POLL_S, self.heartbeat.interval))
                    if time.monotonic() - reaped >= self.heartbeat.interval:
                        storage.reap(study, p, lease)
                        reaped = time.monotonic()
                    continue
                trials = self._group(trial)  # each started with its first heartbeat
                beat.progressed()
                beat.trial, beat.others = trials[0], tuple(trials[1:])
                for t in trials:
                    self.on_event(Event("started", t.number))
                started = time.monotonic()
                try:
                    outcomes = (self.runner.run_group(trials) if len(trials) > 1
                                else [self.runner.run(trial)])
                except KeyboardInterrupt:
                    for t in trials:
                        self._tell(t, Outcome(TrialState.FAIL, fail_reason="interrupted",
                                              interrupted=True))
                    raise
                finally:
                    beat.trial, beat.others = None, ()
                # device time counts whether or not the trial completed (--budget-hours); a
                # repeat trained nothing (it may have waited for its twin); a fused group
                # spent its time once, for all its members; spent as the results are told
                spent = (time.monotonic() - started
                         if any(o.repeat_of is None for o in outcomes) else None)
                told = []
                for t, outcome, ok in zip(trials, outcomes,
                                          self._tell_group(trials, outcomes, spent),
                                          strict=True):
                    if not ok:
                        continue  # another worker failed and retried it meanwhile
                    self.runner.cleanup(outcome)
                    # an ASHA rung or PBT generation segment pauses: not a finished trial (its
                    # member counts once, when its last segment ends)
                    self.on_event(Event("finished", t.number, value=outcome.value,
                                        state="PAUSED" if outcome.paused else outcome.state.name))
                    done += not outcome.paused
                    told.append((t, outcome))
                if told:
                    self._maybe_stop()
                for t, outcome in told:
                    if outcome.broken_device:  # every later CUDA call here would fail too
                        raise DeviceBroken(
                            f"trial {t.number} hit a CUDA device-side assert, which leaves this "
                            "process's GPU unusable; it saved nothing and exits so that a fresh "
                            "worker process takes over (its fail_reason has the full error)")
                for _, outcome in told:
                    if outcome.error is not None:  # its retry is queued; this worker cannot go on
                        raise outcome.error
                for _, outcome in told:
                    failures = (failures + 1 if outcome.state == TrialState.FAIL
                                and not outcome.stopped_by_user else 0)
                if any(o.interrupted for _, o in told):
                    return Summary(done, "stopped")
                if failures >= self.max_failures:
                    last = next(o for _, o in reversed(told) if o.state == TrialState.FAIL)
                    raise TooManyFailures(
                        f"{failures} trials failed in a row (last: {last.fail_reason}); the "
                        f"study was stopped: fix the cause, then `tuner resume {self.handle.name}`"
                    )
        finally:
            beat.halt.set()
            beat.join(self.heartbeat.interval + 5)
            p.attempt(lease.release)  # the next worker reaps at once
            p.attempt(lambda: storage.check_out(storage.engine_of(study), me.worker))

    def _obey(self, controls: storage.Controls) -> None:
        """A person's controls, as read now: a stop stops this worker as SIGTERM does (the
        running trial checkpoints at its next epoch and is queued again); a pause holds new
        trials; a trial asked to stop ends at its next epoch."""
        if controls.stop is not None:
            self.stop.set()
        self.paused = controls.paused
        self.runner.user_stops = controls.stop_trials

    def _stalled(self, trial: optuna.Trial, quiet_s: float) -> None:
        """The heartbeat thread found ``trial`` hung: fail it and queue its retry (if the
        database answers; else the reaper does, the beats having stopped), say so in one
        line, and hand the error to ``on_stall``: the CLI's exits, since this process's main
        thread is stuck in the training loop. Without one, the trial is no longer watched."""
        e = TrialStalled(
            f"trial {trial.number} finished no epoch for {quiet_s:.0f} s (--stall-timeout "
            f"{self.stall_timeout}); it was failed and queued to be retried elsewhere, and this "
            "worker exits: find what hangs the training loop, or raise --stall-timeout")
        self.patience.attempt(lambda: storage.fail_and_retry(
            self.handle.study, trial, self.handle.budget, f"stalled: {e}"))
        log.error("%s", e)
        if self.beat is not None:
            self.beat.trial, self.beat.others = None, ()
        if self.on_stall is not None:
            self.on_stall(e)

    def _group(self, first: optuna.Trial) -> list[optuna.Trial]:
        """``first`` and, when the study fuses (``fuse:``), up to K-1 more trials taken the
        way ``first`` was (each new one in its own budget slot), to train as one. A retry or
        a promotion resumes alone (it is trained alone within the group)."""
        k = self.runner.fuse_size()
        if k <= 1 or not self.runner.fusable(first) or self.stop.is_set():
            return [first]
        return [first, *self._next_trials(k - 1)]

    def _next_trial(self) -> optuna.Trial | None:
        """One trial (:meth:`_next_trials`), or None when there is none to run."""
        return next(iter(self._next_trials(1)), None)

    def _next_trials(self, n: int) -> list[optuna.Trial]:
        """Up to ``n`` trials to run (:func:`tuner.runtime.acquire.next_trials`)."""
        return acquire.next_trials(self.handle, self.patience, n)

    def _maybe_stop(self) -> None:
        """After a finished trial: stop the whole study if its ``stop:`` rule says so (the
        first worker to see it writes the reason; every worker's next acquire obeys)."""
        why = self.patience.call(lambda: stopping.why_stop(self.handle.spec, self.handle.study))
        if why is not None:
            if self.patience.call(lambda: self.handle.budget.stop(why)):
                log.info("study %s stops early: %s", self.handle.name, why)

    def _why_idle(self) -> str | None:
        """Why this worker may stop now (:func:`tuner.runtime.acquire.why_idle`); None: wait."""
        return acquire.why_idle(self.handle, self.patience)

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> bool:
        """Record the outcome; False if the trial had been finished by another worker (its
        heartbeat went silent for a grace period, so it was failed and retried there)."""
        return self._tell_group([trial], [outcome])[0]

    def _tell_group(self, trials: list[optuna.Trial], outcomes: list[Outcome],
                    spent: float | None = None) -> list[bool]:
        """:meth:`_tell` for each trial, a fused group's together, with ``spent`` seconds of
        device time (:func:`tuner.runtime.tell.tell_group`)."""
        return tell.tell_group(self.handle, self.patience, trials, outcomes, spent)


@contextmanager
def graceful_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM / first Ctrl-C: finish the current epoch, checkpoint, leave the trial to be
    retried, exit. A second Ctrl-C (or SIGTERM) stops at once. Only in the main thread
    (signal handlers can be set nowhere else); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

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
