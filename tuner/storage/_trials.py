"""Trial-state operations that Optuna keeps behind private names: heartbeats, claiming a
waiting trial, a scheduler's decision with its continuations, batched user attrs, fresh
reads of a running trial. The only module of tuner that touches ``Study._storage``,
``Trial._trial_id`` or ``optuna.storages._rdb``: when Optuna changes them, this is the file
to change."""

from __future__ import annotations

import copy
import functools
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
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


def _cache_many(study: optuna.Study, trial_ids: Sequence[int]) -> list[optuna.Trial]:
    """:func:`_cache` for several new trials, read from the database in one query (the
    cache's copy and each ``Trial``'s own, which ``optuna.Trial`` would read again)."""
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    storage, wanted = study._storage, set(trial_ids)
    if not isinstance(storage, _CachedStorage) or not wanted:
        return [_cache(study, trial_id) for trial_id in trial_ids]
    # every trial after the first new one: the new ones, and any another worker added
    frozen = {t._trial_id: t for t in storage._backend._get_trials(
        study._study_id, None, set(), min(wanted) - 1) if t._trial_id in wanted}
    with storage._lock:
        storage._studies.setdefault(study._study_id, _StudyInfo())
        storage._add_trials_to_cache(study._study_id, list(frozen.values()))
    study._thread_local.cached_all_trials = None
    return [_trial_of(study, copy.deepcopy(frozen[trial_id])) for trial_id in trial_ids]


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


def start_trial(study: optuna.Study, budget: Any) -> optuna.Trial | None:
    """A new RUNNING trial (what ``study.ask`` makes, without popping waiting trials), its
    budget slot and its first heartbeat, in one transaction; None when the budget is spent.

    One transaction, because a worker killed between the steps left a slot that no trial
    held (the budget came out short), or a RUNNING trial without a heartbeat row, which the
    reaper never sees (it stayed RUNNING for ever, and idle workers waited on it)."""
    rdb = _rdb(study._storage)
    if rdb is None:  # in memory: nothing outlives the process anyway
        if not budget.acquire():
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return study.ask()
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(rdb.scoped_session) as session:
        # Optuna's own lock for numbering trials, taken first (then the budget row), as
        # every tuner transaction that creates a trial does
        models.StudyModel.find_or_raise_by_id(study._study_id, session, for_update=True)
        if session.execute(budget.acquire_statement()).rowcount != 1:
            return None
        model = rdb._get_prepared_new_trial(study._study_id, None, session)
        session.flush()
        trial_id = model.trial_id
        session.execute(_beat(trial_id))
    return _cache(study, trial_id)


def start_trials(study: optuna.Study, budget: Any, n: int) -> list[optuna.Trial]:
    """Up to ``n`` new RUNNING trials, each with its budget slot and first heartbeat, in one
    transaction (what ``n`` calls of :func:`start_trial` make, for a fused group); fewer when
    the budget runs out, none when it is spent. One transaction for all of them: a fused
    group's K starts cost one commit, not K."""
    rdb = _rdb(study._storage)
    if rdb is None or n <= 1:
        trials: list[optuna.Trial] = []
        while len(trials) < n and (t := start_trial(study, budget)) is not None:
            trials.append(t)
        return trials
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    ids: list[int] = []
    with _create_scoped_session(rdb.scoped_session) as session:
        # the numbering lock first, then the budget row, as in start_trial
        models.StudyModel.find_or_raise_by_id(study._study_id, session, for_update=True)
        while len(ids) < n and session.execute(budget.acquire_statement()).rowcount == 1:
            model = rdb._get_prepared_new_trial(study._study_id, None, session)
            session.flush()
            ids.append(model.trial_id)
            session.execute(_beat(model.trial_id))
    return _cache_many(study, ids)


def claim(study: optuna.Study, waiting: FrozenTrial, budget: Any = None) -> optuna.Trial | None:
    """Move a WAITING trial to RUNNING, with its first heartbeat and (given ``budget``: a
    trial enqueued by hand, which needs one) a budget slot, in one transaction; None if
    another worker took it first or the budget is spent. The UPDATE's ``WHERE state =
    WAITING`` is what makes it atomic (a row lock on PostgreSQL/MySQL, SQLite's write
    lock); the heartbeat row in the same transaction leaves no moment when a killed worker
    would leave it RUNNING and unseen by the reaper."""
    rdb = _rdb(study._storage)
    if rdb is None:
        if budget is not None and not budget.acquire():
            return None
        try:
            taken = study._storage.set_trial_state_values(waiting._trial_id,
                                                          state=TrialState.RUNNING)
        except UpdateFinishedTrialError:
            taken = False
        if not taken and budget is not None:
            budget.release()
        return optuna.Trial(study, waiting._trial_id) if taken else None
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    with rdb.engine.connect() as conn, conn.begin() as tx:
        taken = conn.execute(
            table.update().where(table.c.trial_id == waiting._trial_id)
            .where(table.c.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=datetime.now())
        ).rowcount
        if taken and budget is not None and conn.execute(budget.acquire_statement()).rowcount != 1:
            tx.rollback()
            return None
        if not taken:
            return None
        conn.execute(_beat(waiting._trial_id))
    return _cache(study, waiting._trial_id)


class _DeferredWrites:
    """A study's storage that serves ``get_trial`` from one read of a group's trials and keeps
    ``set_trial_state_values`` for one transaction later; everything else as is."""

    def __init__(self, inner: optuna.storages.BaseStorage, frozen: Mapping[int, FrozenTrial]):
        self._inner, self._frozen = inner, frozen
        self.writes: list[tuple[int, TrialState, Sequence[float] | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        frozen = self._frozen.get(trial_id)
        return frozen if frozen is not None else self._inner.get_trial(trial_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        self.writes.append((trial_id, state, values))
        return True


def tell_many(study: optuna.Study,
              items: Sequence[tuple[optuna.Trial, TrialState | None, Sequence[float] | None]]
              ) -> list[bool]:
    """``study.tell(trial, values, state=state)`` for several running trials of ``study`` (a
    fused group's members), with one read of them and their states and values written in one
    transaction instead of two reads and a transaction each. Optuna's own tell checks each
    one and calls the sampler's ``after_trial``; only its write is gathered. Returns, per
    trial, whether it was told: False for a trial that was finished already (failed and
    retried by another worker), as ``study.tell`` refuses it."""
    from optuna.study._tell import _tell_with_warning

    rdb = _rdb(study._storage)
    if rdb is None or len(items) <= 1:
        return [_tell_one(study, trial, state, values) for trial, state, values in items]
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    ids = {trial._trial_id for trial, _, _ in items}
    read = rdb._get_trials(study._study_id, None, set(), min(ids) - 1)
    deferred = _DeferredWrites(study._storage, {t._trial_id: t for t in read if t._trial_id in ids})
    view = copy.copy(study)  # the same study, its one write per trial deferred
    view._storage = deferred  # type: ignore[assignment]
    told = dict.fromkeys(ids, False)
    failure: Exception | None = None
    for trial, state, values in items:
        try:
            _tell_with_warning(view, trial, values, state)
        except Exception as e:  # noqa: BLE001 - Optuna's own write is kept even so, as in tell
            if isinstance(e, ValueError) and deferred.get_trial(trial._trial_id).state.is_finished():
                continue  # "Cannot tell a FAIL trial": finished by another worker already
            failure = failure or e
    with _create_scoped_session(rdb.scoped_session) as session:
        for trial_id, state, values in deferred.writes:
            row = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            if row.state.is_finished():
                continue
            for objective, v in enumerate(values or ()):
                rdb._set_trial_value_without_commit(session, row, objective, v)
            row.state, row.datetime_complete = state, datetime.now()
            told[trial_id] = True
    if failure is not None:
        raise failure
    return [told[trial._trial_id] for trial, _, _ in items]


def _tell_one(study: optuna.Study, trial: optuna.Trial, state: TrialState | None,
              values: Sequence[float] | None) -> bool:
    try:
        study.tell(trial, values, state=state)
    except (UpdateFinishedTrialError, ValueError):
        if not study._storage.get_trial(trial._trial_id).state.is_finished():
            raise
        return False
    return True


def fail_and_retry(study: optuna.Study, trial: optuna.Trial, budget: Any, reason: str) -> bool:
    """Fail the running ``trial`` now, as the reaper fails a dead worker's (a crash that
    counts towards the lineage's retries), and queue its retry; False if it was finished
    already (by the reaper, say)."""
    set_user_attrs(trial, {"fail_reason": reason})
    return _fail_and_requeue(study, trial._trial_id, budget, crashed=True) is not None


def _fail_and_requeue(study: optuna.Study, trial_id: int, budget: Any, *,
                      crashed: bool, reason: str | None = None) -> bool | None:
    """Fail the RUNNING trial ``trial_id`` and enqueue its retry (True) or, past its retries,
    give its slot back (False), in one transaction; None if it was not RUNNING any more.

    One transaction, because a reaper killed between the two left a failed trial that was
    never retried and whose slot nobody held: the study came out a trial short."""
    from tuner.storage._retry import retry_template

    rdb = _rdb(study._storage)
    frozen = study._storage.get_trial(trial_id)
    if rdb is None:
        try:
            if reason is not None:
                study._storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return None
        except UpdateFinishedTrialError:
            return None
        template = retry_template(frozen, crashed=crashed)
        if template is None:
            budget.release()
        else:
            study.add_trial(template)
        return template is not None
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    template = retry_template(frozen, crashed=crashed)
    with _create_scoped_session(rdb.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study._study_id, session, for_update=True)
        row = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        if row.state != TrialState.RUNNING:
            return None
        if reason is not None:
            rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id,
                                               "fail_reason", reason)
        row.state, row.datetime_complete = TrialState.FAIL, datetime.now()
        if crashed and _can_upsert(rdb.engine.name):  # for optuna-dashboard's trial table
            session.execute(_state_rows(rdb, [(trial_id, "lost")]))
        if template is None:
            session.execute(budget.release_statement())
        else:
            rdb._get_prepared_new_trial(study._study_id, template, session)
    return template is not None


def decide(study: optuna.Study, table: sqlalchemy.Table, rows: list[dict[str, Any]],
           continuations: list[FrozenTrial], promoted: Sequence[int] = ()) -> bool:
    """Insert a scheduler's decision ``rows`` into ``table`` (whose primary key lets one
    worker win them) and enqueue its ``continuations`` (WAITING trials), in one transaction;
    False if another worker had inserted one of the rows (nothing is written then). The
    paused trials that go on (``promoted``, by number) say so in their ``tuner_state``, in the same
    transaction (for optuna-dashboard's trial table).

    One transaction, because a decider killed (or cut off from the database) between the rows
    and the continuations left that lineage decided and never continued: paused for ever,
    and, in PBT, the other members waiting on it. Now a decision is whole or absent, and an
    absent one is decided again by the next worker that looks."""
    rdb = _rdb(study._storage)
    if rdb is None:  # as engine_of: ASHA's and PBT's tables live in the study's database
        raise TypeError("the study is not stored in a database")
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    try:
        with _create_scoped_session(rdb.scoped_session) as session:
            # Optuna's lock for numbering trials first, as every tuner transaction that
            # creates a trial takes it (then this table's rows): deciders queue here, and no
            # two transactions take the same locks in opposite orders
            models.StudyModel.find_or_raise_by_id(study._study_id, session, for_update=True)
            session.execute(table.insert(), rows)  # IntegrityError: another worker decided
            for template in continuations:
                rdb._get_prepared_new_trial(study._study_id, template, session)
            if promoted and _can_upsert(rdb.engine.name):
                ids = session.execute(
                    sqlalchemy.select(models.TrialModel.trial_id)
                    .where(models.TrialModel.study_id == study._study_id)
                    .where(models.TrialModel.number.in_(list(promoted)))).scalars().all()
                session.execute(_state_rows(rdb, [(i, "promoted") for i in ids]))
    except sqlalchemy.exc.IntegrityError:
        return False
    return True


def fail_stale_trials(study: optuna.Study, budget: Any) -> list[int]:
    """Fail the trials whose worker stopped beating for a grace period, each with its retry
    enqueued in the same transaction; returns their numbers."""
    rdb = _rdb(study._storage)
    if rdb is None or rdb.heartbeat_interval is None:
        return []
    from tuner.storage._retry import MAX_RETRIES

    failed, log = [], logging.getLogger("tuner")
    for trial_id in rdb._get_stale_trial_ids(study._study_id):
        retried = _fail_and_requeue(study, trial_id, budget, crashed=True,
                                    reason=_lost_reason(rdb, study._storage.get_trial(trial_id)))
        if retried is None:
            continue  # finished meanwhile (its worker told it, or another reaper)
        number = study._storage.get_trial(trial_id).number
        failed.append(number)
        if retried:
            log.warning("trial %d of %s lost its worker (no heartbeat); retrying it", number,
                        study.study_name)
        else:
            log.warning("trial %d of %s lost its worker %d times; not retrying it again",
                        number, study.study_name, MAX_RETRIES + 1)
    return failed


def _lost_reason(rdb: optuna.storages.RDBStorage, trial: FrozenTrial) -> str:
    """The ``fail_reason`` of a trial whose worker stopped beating: when it was last heard
    of (the database's clock) and which worker it was."""
    from optuna.storages._rdb import models

    table = models.TrialHeartbeatModel.__table__
    with rdb.engine.connect() as conn:
        last = conn.execute(sqlalchemy.select(table.c.heartbeat)
                            .where(table.c.trial_id == trial._trial_id)).scalar()
    worker = trial.user_attrs.get("worker") or {}
    who = ", ".join(f"{k} {worker[k]}" for k in ("host", "pid", "device") if worker.get(k))
    when = f"{last:%Y-%m-%d %H:%M:%S}" if last is not None else "its start"
    grace = rdb.grace_period or 2 * (rdb.heartbeat_interval or 0)
    return (f"worker lost: no heartbeat since {when} (database time), over the {grace} s grace "
            "period" + (f"; it ran on {who}" if who else ""))


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set several user attrs of a running trial in one statement and one transaction.

    ``Trial.set_user_attr`` costs a read, a write and a commit per attr, and the attrs tuner
    keeps on every trial were the largest part of its per-trial storage time
    (benchmarks/storage.py)."""
    set_user_attrs_many([(trial, attrs)])


def set_user_attrs_many(items: Sequence[tuple[optuna.Trial, Mapping[str, Any]]], *,
                        finished: bool = False) -> None:
    """:func:`set_user_attrs` for several running trials (a fused group's members) in one
    statement and one transaction. Like ``Trial.set_user_attr``, refuses (writing nothing)
    when one of the trials is finished, unless ``finished``: then the attrs of a trial
    finished meanwhile (by the reaper, optuna-dashboard, another process's tell) are written
    too, since they say what its worker saw."""
    items = [(trial, attrs) for trial, attrs in items if attrs]
    if not items:
        return
    rdb = _rdb(items[0][0].storage)
    dialect = getattr(getattr(rdb, "engine", None), "name", None)
    if rdb is None or not _can_upsert(dialect):
        for trial, attrs in items:
            for k, v in attrs.items():
                try:
                    trial.set_user_attr(k, v)
                except UpdateFinishedTrialError:
                    if not finished:
                        raise
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    table = models.TrialUserAttributeModel.__table__
    rows = [{"trial_id": trial._trial_id, "key": k, "value_json": json.dumps(v)}
            for trial, attrs in items for k, v in attrs.items()]
    ids = [trial._trial_id for trial, _ in items]
    with _create_scoped_session(rdb.scoped_session) as session:
        states = dict(session.execute(
            sqlalchemy.select(models.TrialModel.trial_id, models.TrialModel.state)
            .where(models.TrialModel.trial_id.in_(ids))).all())
        for trial_id in ids:  # as Optuna does per attr
            if not finished:
                rdb.check_trial_is_updatable(trial_id, states[trial_id])
        session.execute(_upsert(dialect, table, rows))
    for trial, attrs in items:  # what Trial.set_user_attr does too
        trial._cached_frozen_trial.user_attrs.update(attrs)


def report_many(reports: Sequence[tuple[optuna.Trial, Sequence[tuple[int, float]]]]
                ) -> list[bool]:
    """Write several running trials' intermediate values, ``(step, value)`` each, in one
    transaction: what ``Trial.report`` writes, for the members of a fused group after an
    epoch (one commit for K members instead of K). A step a trial has already reported is
    left as it is, as ``Trial.report`` leaves it. Returns, per trial, whether it could be
    written: False for a trial that is finished (failed by the reaper, say), which Optuna
    would refuse with ``UpdateFinishedTrialError``; the others are written all the same."""
    if not reports:
        return []
    rdb = _rdb(reports[0][0].storage)
    if rdb is None:
        return [_report_one(trial, steps) for trial, steps in reports]
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    ids = [trial._trial_id for trial, _ in reports]
    value_model = models.TrialIntermediateValueModel
    written: list[tuple[optuna.Trial, list[tuple[int, float]]]] = []
    with _create_scoped_session(rdb.scoped_session) as session:
        states = dict(session.execute(
            sqlalchemy.select(models.TrialModel.trial_id, models.TrialModel.state)
            .where(models.TrialModel.trial_id.in_(ids))).all())
        rows = []
        for trial, steps in reports:
            if states.get(trial._trial_id, TrialState.COMPLETE).is_finished():
                continue
            known = trial._cached_frozen_trial.intermediate_values
            new = [(int(step), float(value)) for step, value in steps if int(step) not in known]
            for step, value in new:
                stored, kind = value_model.intermediate_value_to_stored_repr(value)
                rows.append({"trial_id": trial._trial_id, "step": step,
                             "intermediate_value": stored, "intermediate_value_type": kind})
            written.append((trial, new))
        if rows:
            session.execute(value_model.__table__.insert(), rows)
    for trial, new in written:  # what Trial.report keeps in its cache too
        trial._cached_frozen_trial.intermediate_values.update(new)
    done = {trial._trial_id for trial, _ in written}
    return [trial._trial_id in done for trial, _ in reports]


def _report_one(trial: optuna.Trial, steps: Sequence[tuple[int, float]]) -> bool:
    """In memory: ``Trial.report`` for each step; False if the trial is finished."""
    try:
        for step, value in steps:
            if step not in trial._cached_frozen_trial.intermediate_values:
                trial.report(value, step)
    except UpdateFinishedTrialError:
        return False
    return True


class _OneRead(optuna.Study):
    """``study`` as a pruner sees it, its trials read from the database at most once (at the
    first ``get_trials``), however many trials are judged against it."""

    def __init__(self, study: optuna.Study):  # the same study: no Study.__init__
        self.__dict__.update(study.__dict__)
        self._read: list[FrozenTrial] | None = None

    def _get_trials(self, deepcopy: bool = True, states: Any = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        if self._read is None:
            self._read = self._storage.get_all_trials(self._study_id, deepcopy=False)
        trials = [t for t in self._read if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


def should_prune_many(trials: Sequence[optuna.Trial]) -> list[bool]:
    """``Trial.should_prune`` for several running trials of one study (a fused group's
    members, after their reports), each judged by the study's pruner on its own curve but
    against one read of the study's trials instead of one read per trial. A pruner that
    looks at no other trial (none, threshold) reads nothing. Like reports from several
    workers at one moment, members of one group judged in one read do not see each other's
    rung records (successive halving) written in this call."""
    if not trials:
        return []
    study = trials[0].study
    if len(study.directions) > 1:
        raise NotImplementedError("should_prune_many is for single-objective studies")
    view = _OneRead(study)
    return [bool(study.pruner.prune(view, t._get_latest_trial())) for t in trials]


def _state_rows(rdb: optuna.storages.RDBStorage, states: Sequence[tuple[int, str]]) -> Any:
    from optuna.storages._rdb import models

    from tuner.trial_schema import STATE_ATTR

    return _upsert(rdb.engine.name, models.TrialUserAttributeModel.__table__, [
        {"trial_id": tid, "key": STATE_ATTR, "value_json": json.dumps(state)}
        for tid, state in states])


TRAIN_LOSS_ATTR = "tuner.train_loss"  # system attr: a trial's mean train loss per epoch


def set_system_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set system attrs of a trial in one statement: what tuner keeps on a trial that
    optuna-dashboard should not lay out in its user-attrs table (a long list widens the
    trial's page)."""
    rdb = _rdb(trial.storage)
    if rdb is None or not _can_upsert(rdb.engine.name):
        for k, v in attrs.items():
            trial.storage.set_trial_system_attr(trial._trial_id, k, v)
        return
    from optuna.storages._rdb import models

    with rdb.engine.begin() as conn:
        conn.execute(_upsert(rdb.engine.name, models.TrialSystemAttributeModel.__table__, [
            {"trial_id": trial._trial_id, "key": k, "value_json": json.dumps(v)}
            for k, v in attrs.items()]))


def train_losses(t: FrozenTrial) -> list[float | None] | None:
    """A trial's mean train loss per epoch, if its loop reported one (studies of an older
    tuner kept the list in the ``train_loss`` user attr)."""
    curve = t.system_attrs.get(TRAIN_LOSS_ATTR)
    if curve is None and isinstance(old := t.user_attrs.get("train_loss"), list):
        return old
    return curve


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
