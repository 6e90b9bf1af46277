"""Optuna's per-trial writes with fewer round trips, as :class:`~tuner.storage.TunerStorage`
makes them: what is stored is Optuna's, only the statements differ.

- A report (``Trial.report``) is one transaction of three statements: the trial's state (to
  refuse a finished trial, as Optuna does), the value as an upsert (Optuna reads the step
  first), and the trial's heartbeat, which the report proves alive. The heartbeat thread then
  skips a beat that a report made recently (:func:`beaten_recently`): one transaction per
  epoch instead of two.
- The multi-row upsert (:func:`upsert`) that attrs and states are written with.

benchmarks/storage.py ``--floor`` measures what they save against a trial's round trips.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import optuna
import sqlalchemy


def can_upsert(dialect: str | None) -> bool:
    """Whether ``dialect`` has an INSERT that updates the rows already there."""
    import sqlite3

    return dialect in ("postgresql", "mysql") or (
        dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0))


def upsert(dialect: str, table: sqlalchemy.Table, rows: list[dict[str, Any]],
           keys: tuple[str, ...] = ("trial_id", "key"),
           update: tuple[str, ...] = ("value_json",)) -> Any:
    """One multi-row INSERT that updates the ``update`` columns of the rows (by their unique
    ``keys``) already there."""
    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        stmt = mysql_insert(table).values(rows)
        return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in update})
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(rows)
    return stmt.on_conflict_do_update(index_elements=[table.c[k] for k in keys],
                                      set_={c: stmt.excluded[c] for c in update})


def beat(session: Any, trial_ids: list[int]) -> int:
    """Refresh the heartbeats of ``trial_ids`` in the caller's transaction; how many rows."""
    from optuna.storages._rdb import models

    table = models.TrialHeartbeatModel.__table__
    return session.execute(table.update().where(table.c.trial_id.in_(trial_ids))
                           .values(heartbeat=sqlalchemy.func.now())).rowcount


def note_beats(storage: optuna.storages.RDBStorage, trial_ids: Iterable[int]) -> None:
    """Remember that ``trial_ids``' heartbeats were written just now (with a report)."""
    beats = getattr(storage, "_tuner_beats", None)
    if beats is None:
        return
    if len(beats) > 4096:  # a long-lived worker's finished trials
        beats.clear()
    now = time.monotonic()
    for trial_id in trial_ids:
        beats[trial_id] = now


def beaten_recently(storage: optuna.storages.RDBStorage, trial_id: int) -> bool:
    """Whether a report of this process wrote ``trial_id``'s heartbeat so lately that the
    heartbeat thread's beat can be left out: within half of what the grace period leaves
    after one interval, so the row never grows older than the grace period (the reaper's
    limit) before the next beat."""
    beats = getattr(storage, "_tuner_beats", None)
    interval, grace = storage.heartbeat_interval, storage.grace_period
    last = beats.get(trial_id) if beats else None  # one lookup: the training thread writes
    if last is None or interval is None:
        return False
    slack = ((grace or 2 * interval) - interval) / 2
    return time.monotonic() - last < slack


class LeanWrites(optuna.storages.RDBStorage):
    """Optuna's RDB storage with a report that costs one transaction, heartbeat included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tuner_beats: dict[int, float] = {}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._tuner_beats = {}  # another process's clock: beat afresh

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        dialect = self.engine.name
        if not can_upsert(dialect):
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)
            return
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        value_model = models.TrialIntermediateValueModel
        stored, kind = value_model.intermediate_value_to_stored_repr(intermediate_value)
        row = {"trial_id": trial_id, "step": step, "intermediate_value": stored,
               "intermediate_value_type": kind}
        with _create_scoped_session(self.scoped_session, True) as session:
            state = session.execute(sqlalchemy.select(models.TrialModel.state)
                                    .where(models.TrialModel.trial_id == trial_id)).scalar()
            if state is None:
                raise KeyError(models.NOT_FOUND_MSG)
            self.check_trial_is_updatable(trial_id, state)
            session.execute(upsert(dialect, value_model.__table__, [row], ("trial_id", "step"),
                                   ("intermediate_value", "intermediate_value_type")))
            beaten = self.heartbeat_interval is not None and beat(session, [trial_id]) > 0
        if beaten:
            note_beats(self, [trial_id])
