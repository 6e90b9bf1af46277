"""The RDB storage under a study, Optuna's schema, and a running trial as tuner reads and
beats it: the lowest helpers over Optuna's private API (``Study._storage``,
``Trial._trial_id``, ``optuna.storages._rdb``), which the other storage modules build on.
When Optuna changes them, this file and :mod:`._trials`, :mod:`._group`, :mod:`._attrs` are
the ones to change."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
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


@functools.cache
def _head_revision() -> str:
    """Optuna's newest schema revision, from the alembic scripts it ships (where its
    ``_VersionManager`` reads them): read once a process, for reading them executes every
    script again and maps its models anew, 50 ms of each ``connect()``."""
    import os

    from alembic import script
    from optuna.storages._rdb import models

    folder = os.path.join(os.path.dirname(models.__file__), "alembic")
    return str(script.ScriptDirectory(folder).get_current_head())


def check_schema_version(storage: optuna.storages.RDBStorage) -> None:
    """Optuna's own schema check (``RDBStorage(skip_compatibility_check=False)``), done with
    one connection at a time: Optuna's opens a second one inside a session, which a pool of
    one connection would wait on for ever."""
    current, head = storage._version_manager.get_current_version(), _head_revision()
    if current != head:
        raise RuntimeError(
            f"the runtime optuna version {optuna.__version__} is not compatible with the table "
            f"schema (revision {current}, expected {head}); run `optuna storage upgrade "
            "--storage URL`, or update optuna")


def record_heartbeat(trial: optuna.Trial) -> None:
    """Say that ``trial``'s worker is alive: one UPDATE (Optuna's own beat costs two reads,
    a ``now()`` and the update), and Optuna's path for a trial's first beat, which inserts;
    nothing when a report of this process beat for it a moment ago
    (:func:`tuner.storage._lean.beaten_recently`)."""
    rdb = _rdb(trial.study._storage)
    if rdb is not None:
        from optuna.storages._rdb import models

        from tuner.storage._lean import beaten_recently

        if beaten_recently(rdb, trial._trial_id):
            return

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


def trial_by_number(study: optuna.Study, number: int) -> FrozenTrial | None:
    """Trial ``number`` of the study (one read, not the whole study), or None."""
    try:
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id,
                                                                           number)
    except KeyError:
        return None
    return study._storage.get_trial(trial_id)


def _beat(trial_id: int) -> sqlalchemy.Insert:
    """A trial's first heartbeat row (later beats update it: :func:`record_heartbeat`)."""
    from optuna.storages._rdb import models

    return models.TrialHeartbeatModel.__table__.insert().values(
        trial_id=trial_id, heartbeat=sqlalchemy.func.now())


def _cache(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The trial ``trial_id`` that tuner created or claimed with its own statements, known to
    Optuna's cached storage as if ``create_new_trial`` had made it."""
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    storage = study._storage
    if isinstance(storage, _CachedStorage):
        frozen = storage._backend.get_trial(trial_id)
        with storage._lock:
            storage._studies.setdefault(study._study_id, _StudyInfo())
            storage._add_trials_to_cache(study._study_id, [frozen])
    study._thread_local.cached_all_trials = None  # as Study.ask: sync once every trial
    return optuna.Trial(study, trial_id)


def _new_trial(trial_id: int, number: int, start: datetime) -> FrozenTrial:
    """A trial just created, RUNNING and nothing else yet, as Optuna's ``_create_new_trial``
    returns it (and as reading it back would give it)."""
    return FrozenTrial(number=number, state=TrialState.RUNNING, value=None,
                       datetime_start=start, datetime_complete=None, params={},
                       distributions={}, user_attrs={}, system_attrs={},
                       intermediate_values={}, trial_id=trial_id, values=None)


def _insert_running(session: Any, study_id: int, n: int) -> list[FrozenTrial]:
    """``n`` new RUNNING trials of the study, each with its first heartbeat, in four
    statements whatever ``n`` (``_get_prepared_new_trial`` takes four per trial), numbered
    as Optuna numbers them: by the count of the study's trials before each. Call holding
    Optuna's numbering lock (the study row, FOR UPDATE), as every creator of trials does."""
    from optuna.storages._rdb import models

    table, hb = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    first = session.execute(sqlalchemy.select(sqlalchemy.func.count(table.c.trial_id))
                            .where(table.c.study_id == study_id)).scalar_one()
    start = datetime.now()
    session.execute(table.insert(), [
        {"study_id": study_id, "number": first + i, "state": TrialState.RUNNING,
         "datetime_start": start, "datetime_complete": None} for i in range(n)])
    ids = dict(session.execute(sqlalchemy.select(table.c.number, table.c.trial_id)
                               .where(table.c.study_id == study_id)
                               .where(table.c.number >= first)).all())
    session.execute(hb.insert().values(heartbeat=sqlalchemy.func.now()),
                    [{"trial_id": ids[first + i]} for i in range(n)])
    return [_new_trial(ids[first + i], first + i, start) for i in range(n)]


def _cache_new(study: optuna.Study, frozen: Sequence[FrozenTrial]) -> list[optuna.Trial] | None:
    """:func:`_cache` for trials tuner has just created (:func:`_new_trial`), without reading
    them back; None where they must be read: a storage without Optuna's cache, or MySQL,
    whose DATETIME keeps no microseconds of the start the row in memory has."""
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    storage = study._storage
    if not isinstance(storage, _CachedStorage) or storage._backend.engine.name == "mysql":
        return None
    with storage._lock:
        storage._studies.setdefault(study._study_id, _StudyInfo())
        storage._add_trials_to_cache(study._study_id, [copy.deepcopy(f) for f in frozen])
    study._thread_local.cached_all_trials = None  # as Study.ask: sync once every trial
    return [_trial_of(study, f) for f in frozen]


def _trial_of(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """``optuna.Trial(study, frozen._trial_id)`` built from ``frozen``, just read, instead of
    reading it again: what Trial.__init__ does, once its trial is read."""
    from optuna import pruners

    trial = optuna.Trial.__new__(optuna.Trial)
    trial.study, trial._trial_id, trial.storage = study, frozen._trial_id, study._storage
    trial._cached_frozen_trial = frozen
    study.sampler.before_trial(pruners._filter_study(study, frozen), frozen)
    trial.relative_search_space, trial._relative_params = None, None
    trial._fixed_params = frozen.system_attrs.get("fixed_params", {})
    return trial
