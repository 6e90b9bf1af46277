"""A trial's drawn parameters written in one transaction, not one per ``suggest_*``.

Optuna's ``Trial._suggest`` writes each parameter as it draws it (``set_trial_param``: a
read of the trial, a read of an earlier trial's distribution of that name, an insert and a
commit). A study file's space draws all its parameters at once, so :func:`drawing` holds
those writes while the space is drawn and sends them together when it ends: the same
checks (the trial still running, each distribution compatible with the study's earlier
ones), the rows in one insert, one commit. The trial's own copy is updated by Optuna as it
draws, so the draw itself reads what it drew; other workers see the parameters once they are
all written, a moment later.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import optuna
import sqlalchemy
from optuna import distributions

from tuner.storage._attrs import set_user_attrs
from tuner.storage._lean import can_upsert, upsert
from tuner.storage._rdb import _rdb


class _HeldParams:
    """A trial's storage that keeps ``set_trial_param`` for one write later; everything
    else as is."""

    def __init__(self, inner: optuna.storages.BaseStorage):
        self._inner = inner
        self.rows: list[tuple[str, float, distributions.BaseDistribution]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        self.rows.append((param_name, param_value_internal, distribution))


@contextmanager
def drawing(trial: optuna.Trial, attrs: Mapping[str, Any] | None = None,
            call: Callable[[Callable[[], None]], Any] | None = None) -> Iterator[None]:
    """Within the block, the trial's ``suggest_*`` calls write nothing; at its end (also when
    the draw raised: what was drawn is kept, as before) every parameter drawn is written in
    one transaction, with the user ``attrs`` given (the trial's start attrs: who runs it;
    apart where the database cannot upsert). In memory it changes nothing. ``call`` runs
    each write (a worker's :meth:`~tuner.storage.Patience.call`, through outages: a write
    retried after its commit went through inserts nothing twice)."""
    call = call or (lambda write: write())
    rdb = _rdb(trial.storage)
    if attrs and (rdb is None or not can_upsert(rdb.engine.name)):
        call(partial(set_user_attrs, trial, attrs))  # apart, before the draw
        attrs = None
    if rdb is None:
        yield
        return
    held = _HeldParams(trial.storage)
    trial.storage = held  # type: ignore[assignment]
    try:
        yield
    finally:
        trial.storage = held._inner  # type: ignore[assignment]
        if held.rows or attrs:
            call(partial(write_params, rdb, trial._trial_id, held.rows, attrs or {}))
            trial._cached_frozen_trial.user_attrs.update(attrs or {})


def write_params(rdb: optuna.storages.RDBStorage, trial_id: int,
                 rows: list[tuple[str, float, distributions.BaseDistribution]],
                 attrs: Mapping[str, Any]) -> None:
    """What ``set_trial_param`` does for each row, in one transaction with the user attrs:
    the trial must still be running (else Optuna's ``UpdateFinishedTrialError``), each
    distribution compatible with the one the study stored first under its name (else
    Optuna's ``ValueError``)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(rdb.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        rdb.check_trial_is_updatable(trial_id, trial.state)
        study_id = trial.study_id
        params = models.TrialParamModel.__table__
        known = _known(rdb)
        for name, _, distribution in rows:  # as Optuna reads it: a stored one of the name
            if known.get((study_id, name)) == distributions.distribution_to_json(
                    distribution):
                continue  # this process stored or saw the same one: compatible
            previous = session.execute(
                sqlalchemy.select(params.c.distribution_json)
                .join(models.TrialModel.__table__,
                      models.TrialModel.__table__.c.trial_id == params.c.trial_id)
                .where(models.TrialModel.__table__.c.study_id == study_id,
                       params.c.param_name == name).limit(1)).scalar()
            if previous is not None:
                distributions.check_distribution_compatibility(
                    distributions.json_to_distribution(previous), distribution)
        if attrs:
            session.execute(upsert(rdb.engine.name, models.TrialUserAttributeModel.__table__, [
                {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                for k, v in attrs.items()]))
        if not rows:
            return
        stored = [{"trial_id": trial_id, "param_name": name, "param_value": value,
                   "distribution_json": distributions.distribution_to_json(distribution)}
                  for name, value, distribution in rows]
        session.execute(sqlalchemy.insert(params), stored)
    # what a study stores under a name is compatible with what it stored before (each was
    # checked), so a later draw of the same distribution skips the read; another one (the
    # space changed, the study was made again under the same id) is read and checked
    for row in stored:
        known[(study_id, row["param_name"])] = row["distribution_json"]


def _known(rdb: optuna.storages.RDBStorage) -> dict[tuple[int, str], str]:
    """The distributions this process has seen stored, by (study id, param name)."""
    known = rdb.__dict__.get("_tuner_distributions")
    if known is None:
        known = rdb.__dict__["_tuner_distributions"] = {}
    return known
