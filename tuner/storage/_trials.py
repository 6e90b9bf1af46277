"""Trial-state operations that Optuna keeps behind private names, one trial at a time:
starting a trial with its budget slot and first heartbeat, claiming a waiting trial, failing
and retrying one, a scheduler's decision with its continuations, the reaper's stale trials,
heartbeat ages. A fused group's batched writes are in :mod:`._group`."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tuner.storage._attrs import _can_upsert, _state_rows, set_user_attrs
from tuner.storage._rdb import _beat, _cache, _cache_new, _new_trial, _rdb
from tuner.trial_schema import WORKER_ATTR


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
        trial_id, frozen = model.trial_id, _new_trial(model.trial_id, model.number,
                                                      model.datetime_start)
        session.execute(_beat(trial_id))
    made = _cache_new(study, [frozen])  # built from the row written, not read back
    return made[0] if made is not None else _cache(study, trial_id)


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
    worker = trial.user_attrs.get(WORKER_ATTR) or {}
    who = ", ".join(f"{k} {worker[k]}" for k in ("host", "pid", "device") if worker.get(k))
    when = f"{last:%Y-%m-%d %H:%M:%S}" if last is not None else "its start"
    grace = rdb.grace_period or 2 * (rdb.heartbeat_interval or 0)
    return (f"worker lost: no heartbeat since {when} (database time), over the {grace} s grace "
            "period" + (f"; it ran on {who}" if who else ""))


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
