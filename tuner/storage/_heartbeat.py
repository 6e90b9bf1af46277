"""The heartbeat thread of a worker: says its running trial is alive, and fails the trials of
dead workers (so they are retried), every interval, whatever the training loop is doing."""

from __future__ import annotations

import logging
import threading

import optuna

from tuner.storage._trials import fail_stale_trials, record_heartbeat

log = logging.getLogger("tuner")


class HeartbeatThread(threading.Thread):
    def __init__(self, study: optuna.Study, interval: float):
        super().__init__(name="tuner-heartbeat", daemon=True)
        self.study, self.interval = study, interval
        self.trial: optuna.Trial | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                if (trial := self.trial) is not None:
                    record_heartbeat(trial)
                fail_stale_trials(self.study)
            except Exception as e:  # noqa: BLE001 - a blip must not kill the heartbeat
                log.warning("heartbeat failed: %s", e)
