"""Trial-state operations that Optuna keeps behind private names: heartbeats, claiming a
waiting trial, batched user attrs, fresh reads of a running trial. The only module of tuner
that touches ``Study._storage``, ``Trial._trial_id`` or ``optuna.storages._rdb``: when Optuna
changes them, this is the file to change."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDB storage under Optuna's cache wrapper, or None for other storages."""
    inner = getattr(storage, "_backend", storage)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


def engine_of(study: optuna.Study) -> sqlalchemy.Engine:
    """The SQLAlchemy engine under ``study`` (for counting statements, say)."""
    rdb = _rdb(study._storage)
    if rdb is None:
        raise TypeError("the study is not stored in a database")
    return rdb.engine


def create_schema(conn: sqlalchemy.Connection) -> None:
    """Optuna's tables, its version row and its alembic stamp, on ``conn`` (one connection,
    inside the caller's transaction). What ``RDBStorage`` does on a fresh database, where it
    would open a second connection inside a session."""
    import os

    from alembic import migration, script
    from optuna.storages._rdb import models

    models.BaseModel.metadata.create_all(conn)
    table = models.VersionInfoModel.__table__
    row = conn.execute(sqlalchemy.select(table.c.schema_version)).first()
    if row is None:
        conn.execute(table.insert().values(version_info_id=1,
                                           schema_version=models.SCHEMA_VERSION,
                                           library_version=optuna.__version__))
    context = migration.MigrationContext.configure(conn)
    if context.get_current_revision() is None:
        # as Optuna's _VersionManager: head for a new schema, base for one older than alembic
        scripts = script.ScriptDirectory(os.path.join(os.path.dirname(models.__file__), "alembic"))
        current = row is None or row[0] == models.SCHEMA_VERSION
        context.stamp(scripts, "head" if current else scripts.get_base())


def check_schema_version(storage: optuna.storages.RDBStorage) -> None:
    """Optuna's own schema check (``RDBStorage(skip_compatibility_check=False)``), done with
    one connection at a time: Optuna's opens a second one inside a session, which a pool of
    one connection would wait on for ever."""
    vm = storage._version_manager
    current, head = vm.get_current_version(), vm.get_head_version()
    if current != head:
        raise RuntimeError(
            f"the runtime optuna version {optuna.__version__} is not compatible with the table "
            f"schema (revision {current}, expected {head}); run `optuna storage upgrade "
            "--storage URL`, or update optuna")


def record_heartbeat(trial: optuna.Trial) -> None:
    """Say that ``trial``'s worker is alive: one UPDATE (Optuna's own beat costs two reads,
    a ``now()`` and the update), and Optuna's path for a trial's first beat, which inserts."""
    rdb = _rdb(trial.study._storage)
    if rdb is not None:
        from optuna.storages._rdb import models

        table = models.TrialHeartbeatModel.__table__
        with rdb.engine.begin() as conn:
            beat = conn.execute(table.update().where(table.c.trial_id == trial._trial_id)
                                .values(heartbeat=sqlalchemy.func.now()))
        if beat.rowcount:
            return
    trial.study._storage.record_heartbeat(trial._trial_id)


def refreshed(trial: optuna.Trial) -> FrozenTrial:
    """``trial`` as the database holds it now (its curve, state and attrs)."""
    return trial.study._storage.get_trial(trial._trial_id)


def state(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> TrialState:
    return study._storage.get_trial(trial._trial_id).state


def claim(study: optuna.Study, waiting: FrozenTrial) -> optuna.Trial | None:
    """Move a WAITING trial to RUNNING and return it, unless another worker took it first
    (atomic in the storage: a row lock on PostgreSQL/MySQL, BEGIN IMMEDIATE on SQLite)."""
    try:
        taken = study._storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING)
    except UpdateFinishedTrialError:
        return None
    return optuna.Trial(study, waiting._trial_id) if taken else None


def fail_and_retry(study: optuna.Study, trial: optuna.Trial, budget: Any, reason: str) -> bool:
    """Fail the running ``trial`` now, as the reaper fails a dead worker's (a crash that
    counts towards the lineage's retries), and queue its retry; False if it was finished
    already (by the reaper, say)."""
    from tuner.storage._retry import retry

    set_user_attrs(trial, {"fail_reason": reason})
    try:
        if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    retry(study, refreshed(trial), budget, crashed=True)
    return True


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating; the storage's stale-trial callback
    (``tuner.storage._retry``) queues their retries."""
    with warnings.catch_warnings():  # Optuna calls this experimental, every call
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set several user attrs of a running trial in one statement and one transaction.

    ``Trial.set_user_attr`` costs a read, a write and a commit per attr, and the attrs tuner
    keeps on every trial were the largest part of its per-trial storage time
    (benchmarks/storage.py)."""
    if not attrs:
        return
    rdb = _rdb(trial.storage)
    dialect = getattr(getattr(rdb, "engine", None), "name", None)
    if rdb is None or not _can_upsert(dialect):
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    table = models.TrialUserAttributeModel.__table__
    rows = [{"trial_id": trial._trial_id, "key": k, "value_json": json.dumps(v)}
            for k, v in attrs.items()]
    with _create_scoped_session(rdb.scoped_session) as session:
        current = session.execute(
            sqlalchemy.select(models.TrialModel.state)
            .where(models.TrialModel.trial_id == trial._trial_id)
        ).scalar_one()
        rdb.check_trial_is_updatable(trial._trial_id, current)  # as Optuna does per attr
        session.execute(_upsert(dialect, table, rows))
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what Trial.set_user_attr does too


def _upsert(dialect: str, table: sqlalchemy.Table, rows: list[dict[str, Any]]) -> Any:
    """One multi-row INSERT that updates the rows already there."""
    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        stmt = mysql_insert(table).values(rows)
        return stmt.on_duplicate_key_update(value_json=stmt.inserted.value_json)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(rows)
    return stmt.on_conflict_do_update(index_elements=[table.c.trial_id, table.c.key],
                                      set_={"value_json": stmt.excluded.value_json})


def _can_upsert(dialect: str | None) -> bool:
    import sqlite3

    return dialect in ("postgresql", "mysql") or (
        dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0))


def heartbeat_ages(study: optuna.Study) -> dict[int, float]:
    """Seconds since the last heartbeat of each RUNNING trial of ``study``, by trial number."""
    from optuna.storages._rdb import models

    rdb = _rdb(study._storage)
    if rdb is None:
        return {}
    with rdb.engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = conn.execute(
            sqlalchemy.select(models.TrialModel.number, models.TrialHeartbeatModel.heartbeat)
            .join(models.TrialHeartbeatModel,
                  models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
            .where(models.TrialModel.study_id == study._study_id)
            .where(models.TrialModel.state == TrialState.RUNNING)
        ).all()
    now = now.replace(tzinfo=None)
    return {n: max(0.0, (now - hb.replace(tzinfo=None)).total_seconds()) for n, hb in rows}


def all_studies(storage: optuna.storages.BaseStorage) -> list[tuple[optuna.study.StudySummary | Any,
                                                                     list[FrozenTrial]]]:
    """Every study in ``storage`` with its trials, read in one pass per study."""
    return [(s, storage.get_all_trials(s._study_id, deepcopy=False))
            for s in storage.get_all_studies()]
