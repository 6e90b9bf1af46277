"""Riding out the database: a worker that loses its database (a restart, a failover, dropped
connections) keeps training, and retries its storage calls with exponential backoff and
jitter for up to ``patience`` seconds; past that it gives up with one line.

One :class:`Patience` per worker, shared by its trial loop and its heartbeat thread. It also
decides when the worker may reap other workers' trials: after an outage every running
trial's last heartbeat is old although their workers are alive and retrying, so a worker
counts the grace period from the moment it regained the database itself
(:meth:`Patience.may_reap`), not from the trials' last heartbeats alone.

Retrying a write whose commit reached the server just before the connection dropped can
apply it twice; that window is one round trip wide.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
from sqlalchemy import exc as sa_exc

from tuner.errors import DatabaseUnreachable

log = logging.getLogger("tuner")
T = TypeVar("T")

FIRST_DELAY = 0.25  # s before the first retry; doubles each time, up to ``cap``


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` (or its cause) says the database could not be reached, as opposed to a
    statement the database refused."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return False
        if type(getattr(seen, "orig", None)).__module__.startswith("sqlite3"):
            return False  # a file, not a server: "locked" is contention, not an outage
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, sa_exc.OperationalError | sa_exc.InterfaceError
                      | sa_exc.TimeoutError | ConnectionError):
            return True
        if isinstance(seen, optuna.exceptions.StorageInternalError | sa_exc.StatementError):
            seen = seen.__cause__ or getattr(seen, "orig", None)
            continue
        seen = seen.__cause__
    return False


class Patience:
    """How long a worker waits for its database, and when it may reap again."""

    def __init__(self, seconds: float, grace_period: float, cap: float = 5.0):
        self.seconds, self.grace_period, self.cap = seconds, grace_period, cap
        self._lock = threading.Lock()
        self.down_since: float | None = None  # monotonic time of the first failed call
        self.regained_at = float("-inf")  # monotonic time the database came back
        self.outages = 0

    # ---- state ------------------------------------------------------------------------
    def down(self) -> float:
        """Record a failed call; returns for how long the database has been unreachable."""
        now = time.monotonic()
        with self._lock:
            if self.down_since is None:
                self.down_since = now
                self.outages += 1
                log.warning("database unreachable; training goes on, retrying for up to %d s",
                            self.seconds)
            return now - self.down_since

    def up(self) -> None:
        """Record a call that succeeded."""
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is not None:
                now = time.monotonic()
                log.warning("database back after %.0f s", now - self.down_since)
                self.down_since, self.regained_at = None, now

    def exhausted(self) -> bool:
        since = self.down_since
        return since is not None and time.monotonic() - since > self.seconds

    def error(self) -> DatabaseUnreachable:
        since = self.down_since
        waited = 0.0 if since is None else time.monotonic() - since
        return DatabaseUnreachable(
            f"the database was unreachable for {waited:.0f} s (--db-patience {self.seconds:g}); "
            "this worker stopped, its trial is resumable: start workers again once it is back")

    def may_reap(self) -> bool:
        """Whether trials silent for a grace period may be failed: the database is up and has
        been for a grace period (so live workers riding out the same outage have beaten)."""
        return (self.down_since is None
                and time.monotonic() - self.regained_at >= self.grace_period)

    # ---- calls --------------------------------------------------------------------------
    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried while the database is unreachable, for up to the patience."""
        delay = FIRST_DELAY
        while True:
            try:
                result = fn()
            except Exception as e:
                if not is_outage(e):
                    raise
                self.down()
                if self.exhausted():
                    raise self.error() from e
                time.sleep(min(self.cap, delay) * random.uniform(0.5, 1.5))
                delay *= 2
                continue
            self.up()
            return result

    def attempt(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """``fn()`` once: (True, result), or (False, None) when the database is unreachable."""
        try:
            result = fn()
        except Exception as e:
            if not is_outage(e):
                raise
            self.down()
            return False, None
        self.up()
        return True, result
