"""A trial's user and system attrs written in one statement (a multi-row upsert), for one
trial or for a fused group's members, and the upsert itself."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial

from tuner.storage._lean import can_upsert as _can_upsert
from tuner.storage._lean import upsert as _upsert
from tuner.storage._rdb import _rdb
from tuner.trial_schema import TRAIN_LOSS_ATTR, TRAIN_LOSS_CURVE_ATTR


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set several user attrs of a running trial in one statement and one transaction.

    ``Trial.set_user_attr`` costs a read, a write and a commit per attr, and the attrs tuner
    keeps on every trial were the largest part of its per-trial storage time
    (benchmarks/storage.py)."""
    set_user_attrs_many([(trial, attrs)])


def set_user_attrs_many(items: Sequence[tuple[optuna.Trial, Mapping[str, Any]]], *,
                        system: Sequence[tuple[optuna.Trial, Mapping[str, Any]]] = (),
                        finished: bool = False) -> None:
    """:func:`set_user_attrs` for several running trials (a fused group's members) in one
    statement and one transaction, with ``system`` attrs of those trials (their train-loss
    curves, :func:`set_system_attrs`) in the same transaction. Like
    ``Trial.set_user_attr``, refuses (writing nothing) when one of the trials is finished,
    unless ``finished``: then the attrs of a trial finished meanwhile (by the reaper,
    optuna-dashboard, another process's tell) are written too, since they say what its
    worker saw."""
    items = [(trial, attrs) for trial, attrs in items if attrs]
    system = [(trial, attrs) for trial, attrs in system if attrs]
    if not items and not system:
        return
    rdb = _rdb((items or system)[0][0].storage)
    dialect = getattr(getattr(rdb, "engine", None), "name", None)
    if rdb is None or not _can_upsert(dialect):
        for trial, attrs in items:
            for k, v in attrs.items():
                try:
                    trial.set_user_attr(k, v)
                except UpdateFinishedTrialError:
                    if not finished:
                        raise
        for trial, attrs in system:
            set_system_attrs(trial, attrs)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    ids = list(dict.fromkeys(trial._trial_id for trial, _ in [*items, *system]))
    with _create_scoped_session(rdb.scoped_session) as session:
        if not finished:
            states = dict(session.execute(
                sqlalchemy.select(models.TrialModel.trial_id, models.TrialModel.state)
                .where(models.TrialModel.trial_id.in_(ids))).all())
            for trial_id in ids:  # as Optuna does per attr
                rdb.check_trial_is_updatable(trial_id, states[trial_id])
        upsert_attrs(session, dialect, items, system)
    for trial, attrs in items:  # what Trial.set_user_attr does too
        trial._cached_frozen_trial.user_attrs.update(attrs)


def upsert_attrs(session: Any, dialect: str,
                 user: Sequence[tuple[optuna.Trial, Mapping[str, Any]]],
                 system: Sequence[tuple[optuna.Trial, Mapping[str, Any]]] = ()) -> None:
    """Trials' user and system attrs in the caller's transaction, a statement per table,
    whatever state the trials are in."""
    from optuna.storages._rdb import models

    for table, of in ((models.TrialUserAttributeModel.__table__, user),
                      (models.TrialSystemAttributeModel.__table__, system)):
        rows = [{"trial_id": trial._trial_id, "key": k, "value_json": json.dumps(v)}
                for trial, attrs in of for k, v in attrs.items()]
        if rows:
            session.execute(_upsert(dialect, table, rows))


def _state_rows(rdb: optuna.storages.RDBStorage, states: Sequence[tuple[int, str]]) -> Any:
    from optuna.storages._rdb import models

    from tuner.trial_schema import STATE_ATTR

    return _upsert(rdb.engine.name, models.TrialUserAttributeModel.__table__, [
        {"trial_id": tid, "key": STATE_ATTR, "value_json": json.dumps(state)}
        for tid, state in states])


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
    curve = t.system_attrs.get(TRAIN_LOSS_CURVE_ATTR)
    if curve is None and isinstance(old := t.user_attrs.get(TRAIN_LOSS_ATTR), list):
        return old
    return curve
