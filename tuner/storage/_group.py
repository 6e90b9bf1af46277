"""A fused group's batched writes: its K members started, reported, judged and told with
one transaction (or one read) each, not K (``tuner.training.fuse``; :class:`tuner.trials.runner.TrialRunner`
drives them)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tuner.storage._attrs import set_user_attrs_many, upsert_attrs
from tuner.storage._lean import beat, can_upsert, note_beats, upsert
from tuner.storage._rdb import _beat, _cache, _cache_new, _insert_running, _rdb, _trial_of
from tuner.storage._trials import start_trial


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
    frozen: list[FrozenTrial] = []
    mysql = rdb.engine.name == "mysql"  # one by one, and read back (_cache_new)
    with _create_scoped_session(rdb.scoped_session) as session:
        # the numbering lock first, then the budget row, as in start_trial
        models.StudyModel.find_or_raise_by_id(study._study_id, session, for_update=True)
        slots = 0
        while slots < n and session.execute(budget.acquire_statement()).rowcount == 1:
            slots += 1
            if mysql:
                model = rdb._get_prepared_new_trial(study._study_id, None, session)
                session.flush()
                ids.append(model.trial_id)
                session.execute(_beat(model.trial_id))
        if slots and not mysql:  # the trials and their heartbeats in a few statements
            frozen = _insert_running(session, study._study_id, slots)
    if mysql:
        return _cache_many(study, ids)
    made = _cache_new(study, frozen) if frozen else []  # built from the rows written
    return made if made is not None else _cache_many(study, [f._trial_id for f in frozen])


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
              items: Sequence[tuple[optuna.Trial, TrialState | None, Sequence[float] | None]],
              *, attrs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]] = (),
              also: Sequence[sqlalchemy.Executable] = ()) -> list[bool]:
    """``study.tell(trial, values, state=state)`` for several running trials of ``study`` (a
    fused group's members), with one read of them and their states and values written in one
    transaction instead of two reads and a transaction each. Optuna's own tell checks each
    one and calls the sampler's ``after_trial``; only its write is gathered. Returns, per
    trial, whether it was told: False for a trial that was finished already (failed and
    retried by another worker), as ``study.tell`` refuses it. A lone trial is told from the
    copy this worker kept of it (its params, attrs and reports), with no read at all.

    In the same transaction: ``attrs``, each trial's closing user attrs and system attrs
    (in the order of ``items``; written also for a trial finished meanwhile: they say what
    its worker saw), and the ``also`` statements (the budget's spend: the device time was
    spent whether or not the trial could still be told)."""
    from optuna.study._tell import _tell_with_warning

    closing = list(zip([t for t, _, _ in items], attrs, strict=True)) if attrs else []
    for trial, (user, _) in closing:  # Optuna's tell below sees them, as it read them
        trial._cached_frozen_trial.user_attrs.update(user)
    rdb = _rdb(study._storage)
    if rdb is None or not items or not can_upsert(rdb.engine.name):
        set_user_attrs_many([(t, user) for t, (user, _) in closing],
                            system=[(t, system) for t, (_, system) in closing], finished=True)
        told = [_tell_one(study, trial, state, values) for trial, state, values in items]
        if also and rdb is not None:
            with rdb.engine.begin() as conn:
                for statement in also:
                    conn.execute(statement)
        return told
    from optuna.storages._rdb.storage import _create_scoped_session

    ids = {trial._trial_id for trial, _, _ in items}
    if len(items) == 1:  # the trial as this worker kept it (params, attrs, reports): no read
        read = [copy.deepcopy(items[0][0]._cached_frozen_trial)]
    else:
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
        _write_results(rdb, session, deferred.writes, told)
        upsert_attrs(session, rdb.engine.name, [(t, user) for t, (user, _) in closing],
                     [(t, system) for t, (_, system) in closing])
        for statement in also:
            session.execute(statement)
    if failure is not None:
        raise failure
    return [told[trial._trial_id] for trial, _, _ in items]


def _write_results(rdb: optuna.storages.RDBStorage, session: Any,
                   writes: Sequence[tuple[int, TrialState, Sequence[float] | None]],
                   told: dict[int, bool]) -> None:
    """The states and values of several trials in the caller's transaction, as Optuna's
    ``set_trial_state_values`` writes each: the trials locked and read in one statement,
    their values in one upsert, their states in one UPDATE per state; a trial finished
    meanwhile (the reaper's, another process's) is left as it is. Marks ``told``."""
    from optuna.storages._rdb import models

    if not writes:
        return
    table = models.TrialModel.__table__
    ids = [trial_id for trial_id, _, _ in writes]
    live = {trial_id for trial_id, state in session.execute(
        sqlalchemy.select(table.c.trial_id, table.c.state).where(table.c.trial_id.in_(ids))
        .with_for_update()).all() if not state.is_finished()}
    values_rows, by_state = [], {}
    for trial_id, state, values in writes:
        if trial_id not in live:
            continue
        live.discard(trial_id)
        for objective, v in enumerate(values or ()):
            stored, kind = models.TrialValueModel.value_to_stored_repr(v)
            values_rows.append({"trial_id": trial_id, "objective": objective, "value": stored,
                                "value_type": kind})
        by_state.setdefault(state, []).append(trial_id)
        told[trial_id] = True
    if values_rows:
        session.execute(upsert(rdb.engine.name, models.TrialValueModel.__table__, values_rows,
                               ("trial_id", "objective"), ("value", "value_type")))
    now = datetime.now()
    for state, trial_ids in by_state.items():
        session.execute(table.update().where(table.c.trial_id.in_(trial_ids))
                        .values(state=state, datetime_complete=now))


def _tell_one(study: optuna.Study, trial: optuna.Trial, state: TrialState | None,
              values: Sequence[float] | None) -> bool:
    try:
        study.tell(trial, values, state=state)
    except (UpdateFinishedTrialError, ValueError):
        if not study._storage.get_trial(trial._trial_id).state.is_finished():
            raise
        return False
    return True


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
        # the members' heartbeats with their reports (the heartbeat thread then skips them)
        beaten = ([t._trial_id for t, _ in written]
                  if written and rdb.heartbeat_interval is not None else [])
        if beaten and beat(session, beaten) != len(beaten):
            beaten = []
    note_beats(rdb, beaten)
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
