"""The heartbeat thread of a worker: says its running trial is alive, and fails the trials of
dead workers (so they are retried), every interval, whatever the training loop is doing.

It shares the worker's one connection (a pool of one) and its :class:`Patience`: while the
database is unreachable it retries, and it reaps only once the worker has had the database
back for a grace period.

With a ``stall_timeout``, it also watches the training loop: a trial that finished no epoch
(:meth:`HeartbeatThread.progressed`) for that long is handed to ``on_stall`` instead of being
kept alive: its process lives, but its training is hung.

Each beat also checks the worker in (``me``) and reads the study's controls (:mod:`._controls`:
stop, pause, stop a trial), handed to ``on_controls``: a worker obeys them within one
heartbeat, mid-trial too."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import optuna

from tuner.storage._budget import Budget
from tuner.storage._controls import Controls, WorkerRow, check_in
from tuner.storage._lease import Lease
from tuner.storage._outage import Patience
from tuner.storage._rdb import engine_of, record_heartbeat
from tuner.storage._trials import fail_stale_trials

log = logging.getLogger("tuner")


class HeartbeatThread(threading.Thread):
    def __init__(self, study: optuna.Study, interval: float, patience: Patience | None = None,
                 lease: Lease | None = None, stall_timeout: float | None = None,
                 on_stall: Callable[[optuna.Trial, float], None] | None = None,
                 on_controls: Callable[[Controls], None] | None = None,
                 me: WorkerRow | None = None):
        super().__init__(name="tuner-heartbeat", daemon=True)
        self.study, self.interval = study, interval
        self.patience = patience or Patience(float("inf"), 0)
        self.lease = lease
        self.trial: optuna.Trial | None = None
        # the other members of a fused group (tuner.training.fuse), kept alive with ``trial``
        self.others: tuple[optuna.Trial, ...] = ()
        self.halt = threading.Event()
        self.stall_timeout, self.on_stall = stall_timeout, on_stall
        self.last_progress = time.monotonic()
        self.on_controls, self.me = on_controls, me

    def progressed(self) -> None:
        """The running trial started or finished an epoch."""
        self.last_progress = time.monotonic()

    def run(self) -> None:
        while not self.halt.wait(self.interval if self.patience.down_since is None
                                 else min(1.0, self.interval)):
            try:
                if self.on_controls is not None and self.me is not None:
                    me = dataclasses.replace(self.me, trial=None if self.trial is None
                                             else self.trial.number)
                    ok, c = self.patience.attempt(
                        lambda me=me: check_in(engine_of(self.study), self.study.study_name, me))
                    if ok:
                        self.on_controls(c)
                if (trial := self.trial) is not None:
                    quiet = time.monotonic() - self.last_progress
                    if self.stall_timeout is not None and quiet > self.stall_timeout:
                        if self.on_stall is not None:
                            self.on_stall(trial, quiet)
                        continue  # no beat: silent, the reaper fails it like a dead one's
                    ok, _ = self.patience.attempt(lambda t=trial: record_heartbeat(t))
                    if not ok:
                        continue
                    for other in self.others:
                        self.patience.attempt(lambda t=other: record_heartbeat(t))
                reap(self.study, self.patience, self.lease)
            except Exception as e:  # noqa: BLE001 - a blip must not kill the heartbeat
                log.warning("heartbeat failed: %s", e)


def reap(study: optuna.Study, patience: Patience, lease: Lease | None = None) -> None:
    """Fail the trials whose worker stopped beating, if this worker holds the study's reaper
    lease (one reaper at a time), unless it regained the database less than a grace period
    ago (their silence may be the outage's)."""
    if not patience.may_reap():
        return
    if lease is not None:
        ok, held = patience.attempt(lease.take)
        if not (ok and held):
            return
    budget = Budget(engine_of(study), study.study_name)
    patience.attempt(lambda: fail_stale_trials(study, budget))
