"""What the console shows, read with a few aggregate queries straight from the tables, so a
study of 10,000 trials loads as fast as one of ten (Optuna's ``get_all_trials`` builds every
trial with its attrs: seconds, at that size).

    studies_overview(engine)           one row per study: counts, best, budget, controls,
                                       workers, last activity

One study in detail (:func:`tuner.storage._detail.study_overview`) reads its row here.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from optuna.storages._rdb import models
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.trial import FrozenTrial, TrialState

from tuner.schedules import PAUSED_ATTR, RETIRED
from tuner.storage._budget import BudgetState, budgets
from tuner.storage._controls import Controls, WorkerRow, controls, trial_stops, workers
from tuner.storage._ledger import promotions
from tuner.storage._retry import LINEAGE_ATTR, lineage

_T = models.TrialModel.__table__
_V = models.TrialValueModel.__table__
_IV = models.TrialIntermediateValueModel.__table__
_UA = models.TrialUserAttributeModel.__table__
_HB = models.TrialHeartbeatModel.__table__
_S = models.StudyModel.__table__
_SD = models.StudyDirectionModel.__table__
_SUA = models.StudyUserAttributeModel.__table__
_SSA = models.StudySystemAttributeModel.__table__

SPEC_KEY = "tuner.spec"  # tuner.study.SPEC_ATTR: the study file, stored in the study
RECENT_WORKERS_S = 600  # workers silent longer than this are no longer listed


@dataclass
class StudyRow:
    study_id: int
    name: str
    directions: list[str]
    counts: dict[str, int]  # the trials by kind, as the overview's classifier counts them
    best: float | None  # the first objective's best complete value
    best_trial: int | None
    front: int | None  # multi-objective: the Pareto front's size
    first_start: dt.datetime | None
    last_activity: dt.datetime | None
    mean_duration_s: float | None
    budget: BudgetState | None
    controls: Controls
    workers: list[WorkerRow]
    spec: dict[str, Any] | None  # the stored study file (None: not a tuner study)
    db_now: float = field(default_factory=time.time)


# what a classifier of trials is given: a study's trials (lean: state, number, and only the
# user attrs asked for and the constraints), the paused trials retired at their rung, and the
# running trials' heartbeat ages (s); it returns the trials' counts by kind
Classify = Callable[[list[FrozenTrial], frozenset[int], dict[int, float]], dict[str, int]]


def optuna_states(trials: list[FrozenTrial], retired: frozenset[int],
                  ages: dict[int, float]) -> dict[str, int]:
    """Optuna's own states (the default :data:`Classify`; tuner's views count through
    ``tuner.results.status.trial_state``)."""
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _counts(conn: sa.Connection, classify: Classify, attrs: tuple[str, ...],
            study_id: int | None = None) -> dict[int, dict[str, int]]:
    """Each study's trials counted by ``classify``. Only the trials it may tell apart from
    their Optuna state are read, lean: those with a user attr named in ``attrs`` (or paused),
    with constraints, or running; the others (most of a big study) are counted by state in
    SQL and classified as one bare trial of that state is (not Optuna's ``get_all_trials``,
    which reads every attr and intermediate value: seconds at 10,000 trials)."""

    def where(q: sa.Select[Any]) -> sa.Select[Any]:
        return q if study_id is None else q.where(_T.c.study_id == study_id)

    by_state: dict[int, dict[TrialState, int]] = {}
    for sid, state, n in conn.execute(where(
            sa.select(_T.c.study_id, _T.c.state, sa.func.count())
            .group_by(_T.c.study_id, _T.c.state))):
        by_state.setdefault(sid, {})[_state(state)] = n
    user: dict[int, dict[str, Any]] = {}
    for tid, key, value in conn.execute(where(
            sa.select(_UA.c.trial_id, _UA.c.key, _UA.c.value_json)
            .join(_T, _T.c.trial_id == _UA.c.trial_id)
            .where(_UA.c.key.in_({*attrs, PAUSED_ATTR})))):
        user.setdefault(tid, {})[key] = json.loads(value)
    # a paused segment's lineage (to match the segments retired at their rung)
    paused = sa.select(_UA.c.trial_id).where(_UA.c.key == PAUSED_ATTR)
    for tid, value in conn.execute(where(
            sa.select(_UA.c.trial_id, _UA.c.value_json).join(_T, _T.c.trial_id == _UA.c.trial_id)
            .where(_UA.c.key == LINEAGE_ATTR).where(_UA.c.trial_id.in_(paused)))):
        user.setdefault(tid, {})[LINEAGE_ATTR] = json.loads(value)
    tsa = models.TrialSystemAttributeModel.__table__
    system: dict[int, dict[str, Any]] = {}
    for tid, key, value in conn.execute(where(
            sa.select(tsa.c.trial_id, tsa.c.key, tsa.c.value_json)
            .join(_T, _T.c.trial_id == tsa.c.trial_id)
            .where(sa.or_(tsa.c.key == _CONSTRAINTS_KEY,
                          tsa.c.key.like(f"{_CONSTRAINTS_KEY}:%"))))):
        system.setdefault(tid, {})[key] = json.loads(value)
    rows = conn.execute(where(sa.select(_T.c.trial_id, _T.c.study_id, _T.c.number, _T.c.state)
                              .where(_T.c.state == TrialState.RUNNING))).all()
    ids = sorted({*user, *system} - {r[0] for r in rows})
    for i in range(0, len(ids), 500):
        rows += conn.execute(sa.select(_T.c.trial_id, _T.c.study_id, _T.c.number, _T.c.state)
                             .where(_T.c.trial_id.in_(ids[i:i + 500]))).all()
    ages = _heartbeat_ages(conn, [r[0] for r in rows if _state(r[3]) == TrialState.RUNNING])
    read: dict[int, list[FrozenTrial]] = {}
    age_by: dict[int, dict[int, float]] = {}
    for tid, sid, number, state in rows:
        read.setdefault(sid, []).append(_lean(number, _state(state), user.get(tid, {}),
                                              system.get(tid, {})))
        if tid in ages:
            age_by.setdefault(sid, {})[number] = ages[tid]
    gone = _retired_pairs(conn, study_id)
    out: dict[int, dict[str, int]] = {}
    for sid, states in by_state.items():
        trials = read.get(sid, [])
        retired = frozenset(t.number for t in trials if t.state == TrialState.PRUNED
                            and PAUSED_ATTR in t.user_attrs
                            and (sid, lineage(t), int(t.user_attrs[PAUSED_ATTR])) in gone)
        counts = classify(trials, retired, age_by.get(sid, {}))
        for t in trials:
            states[t.state] -= 1
        for state, n in states.items():  # the bare trials: as one of them is classified
            for kind in classify([_lean(-1, state, {}, {})], frozenset(), {}) if n else ():
                counts[kind] = counts.get(kind, 0) + n
        out[sid] = counts
    return out


def _lean(number: int, state: TrialState, user_attrs: dict[str, Any],
          system_attrs: dict[str, Any]) -> FrozenTrial:
    return FrozenTrial(number=number, state=state, value=None, datetime_start=None,
                       datetime_complete=None, params={}, distributions={},
                       user_attrs=user_attrs, system_attrs=system_attrs,
                       intermediate_values={}, trial_id=-1)


def _state(state: Any) -> TrialState:
    return state if isinstance(state, TrialState) else TrialState[str(state)]


def _retired_pairs(conn: sa.Connection, study_id: int | None) -> set[tuple[int, int, int]]:
    """(study id, lineage, rung) of every segment retired at its rung."""
    if not _has(conn, promotions):
        return set()
    p = promotions.c
    q = (sa.select(_S.c.study_id, p.lineage, p.rung).join(_S, _S.c.study_name == p.study_name)
         .where(p.trial == RETIRED))
    if study_id is not None:
        q = q.where(_S.c.study_id == study_id)
    return {(int(s), int(a), int(b)) for s, a, b in conn.execute(q)}


def _heartbeat_ages(conn: sa.Connection, ids: list[int]) -> dict[int, float]:
    """Seconds since each of these trials' last heartbeat, by trial id, by the database's
    clock (the one that wrote them)."""
    if not ids:
        return {}
    db_now = conn.execute(sa.select(sa.func.now())).scalar_one().replace(tzinfo=None)
    out = {}
    for i in range(0, len(ids), 500):
        for tid, hb in conn.execute(sa.select(_HB.c.trial_id, _HB.c.heartbeat)
                                    .where(_HB.c.trial_id.in_(ids[i:i + 500]))):
            out[tid] = max(0.0, (db_now - hb.replace(tzinfo=None)).total_seconds())
    return out


def _times(conn: sa.Connection, study_id: int | None = None) -> dict[int, tuple[Any, ...]]:
    """first start, last activity, mean duration of finished trials (s), by study."""
    q = sa.select(_T.c.study_id, sa.func.min(_T.c.datetime_start), sa.func.max(_T.c.datetime_start),
                  sa.func.max(_T.c.datetime_complete)).group_by(_T.c.study_id)
    if study_id is not None:
        q = q.where(_T.c.study_id == study_id)
    out = {sid: (first, max((x for x in (a, b) if x is not None), default=None), None)
           for sid, first, a, b in conn.execute(q)}
    # the mean duration from the latest 200 finished trials of each study (recent speed)
    done = (sa.select(_T.c.study_id, _T.c.datetime_start, _T.c.datetime_complete)
            .where(_T.c.state.in_([TrialState.COMPLETE, TrialState.PRUNED]))
            .where(_T.c.datetime_start.is_not(None)).where(_T.c.datetime_complete.is_not(None)))
    if study_id is not None:
        done = done.where(_T.c.study_id == study_id).order_by(_T.c.trial_id.desc()).limit(200)
    spans: dict[int, list[float]] = {}
    for sid, a, b in conn.execute(done):
        spans.setdefault(sid, []).append((b - a).total_seconds())
    for sid, s in spans.items():
        if sid in out:
            out[sid] = (*out[sid][:2], sum(s) / len(s))
    return out


def _best(conn: sa.Connection, study_id: int, directions: list[str]
          ) -> tuple[float | None, int | None, int | None]:
    """(best value, its trial, Pareto front size) among complete trials."""
    complete = (sa.select(_T.c.number, _V.c.objective, _V.c.value)
                .join(_V, _V.c.trial_id == _T.c.trial_id)
                .where(_T.c.study_id == study_id).where(_T.c.state == TrialState.COMPLETE))
    if len(directions) == 1:
        order = _V.c.value.desc() if directions[0] == "maximize" else _V.c.value.asc()
        row = conn.execute(complete.where(_V.c.value.is_not(None)).order_by(order)
                           .limit(1)).first()
        return (None, None, None) if row is None else (row[2], row[0], None)
    values: dict[int, list[float]] = {}
    for number, objective, value in conn.execute(complete):
        values.setdefault(number, [0.0] * len(directions))[objective] = value
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    points = sorted((tuple(s * v for s, v in zip(signs, vs, strict=True)), n)
                    for n, vs in values.items())
    front: list[tuple[float, ...]] = []
    for p, _ in points:  # sorted: a point is dominated only by one before it
        if not any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p for q in front):
            front.append(p)
    return None, None, len(front)


def _has(conn: sa.Connection, table: sa.Table) -> bool:
    """``table`` (one of tuner's) exists: a database made by plain Optuna or an older tuner,
    opened by a reader that creates nothing, lacks some (read once per connection)."""
    present = conn.info.get("tuner_tables")
    if present is None:
        present = conn.info["tuner_tables"] = set(sa.inspect(conn).get_table_names())
    return table.name in present


def _budget_row(conn: sa.Connection, name: str) -> BudgetState | None:
    if not _has(conn, budgets):
        return None
    c = budgets.c
    row = conn.execute(sa.select(c.target, c.taken, c.deadline, c.seconds_target,
                                 c.seconds_spent, c.stopped).where(c.study_name == name)).first()
    return None if row is None else BudgetState(row[0], row[1], row[2], row[3], row[4] or 0.0,
                                                row[5])


def _controls_row(conn: sa.Connection, name: str) -> Controls:
    if not _has(conn, controls):
        return Controls()
    row = conn.execute(sa.select(controls.c.paused, controls.c.stop)
                       .where(controls.c.study_name == name)).first()
    asked = conn.execute(sa.select(trial_stops.c.trial)
                         .where(trial_stops.c.study_name == name)).scalars().all()
    return Controls(bool(row[0]) if row else False, row[1] if row else None, frozenset(asked))


def _workers(conn: sa.Connection, name: str, now: float) -> list[WorkerRow]:
    if not _has(conn, workers):
        return []
    c = workers.c
    rows = conn.execute(sa.select(c.worker, c.host, c.pid, c.device, c.trial, c.seen)
                        .where(c.study_name == name).where(c.seen >= now - RECENT_WORKERS_S)
                        .order_by(c.host, c.pid)).all()
    return [WorkerRow(*r) for r in rows]


def _row(conn: sa.Connection, study_id: int, name: str, counts: dict[str, int],
         times: tuple[Any, ...], now: float) -> StudyRow:
    directions = [d.name.lower() if hasattr(d, "name") else str(d).lower() for d in
                  conn.execute(sa.select(_SD.c.direction).where(_SD.c.study_id == study_id)
                               .order_by(_SD.c.objective)).scalars()]
    spec_json = conn.execute(sa.select(_SUA.c.value_json).where(_SUA.c.study_id == study_id)
                             .where(_SUA.c.key == SPEC_KEY)).scalar()
    spec = None
    if spec_json is not None:
        spec = json.loads(spec_json)
        spec = json.loads(spec) if isinstance(spec, str) else spec
        names = conn.execute(sa.select(_SSA.c.value_json).where(_SSA.c.study_id == study_id)
                             .where(_SSA.c.key == "study:metric_names")).scalar()
        if names is not None:  # the metric named from the data's labels (no metric: given)
            spec["metric_names"] = json.loads(names)
    best, best_trial, front = _best(conn, study_id, directions)
    return StudyRow(study_id, name, directions, counts, best, best_trial, front,
                    times[0], times[1], times[2], _budget_row(conn, name),
                    _controls_row(conn, name), _workers(conn, name, now), spec, now)


def studies_overview(engine: sa.Engine, classify: Classify = optuna_states,
                     attrs: tuple[str, ...] = ()) -> list[StudyRow]:
    """Every study, in name order; its trials counted by ``classify``, which reads the
    user attrs named in ``attrs``."""
    now = time.time()
    with engine.connect() as conn:
        conn.info.pop("tuner_tables", None)  # read afresh: a pooled connection keeps its info
        studies = conn.execute(sa.select(_S.c.study_id, _S.c.study_name)
                               .order_by(_S.c.study_name)).all()
        counts, times = _counts(conn, classify, attrs), _times(conn)
        return [_row(conn, sid, name, counts.get(sid, {}), times.get(sid, (None, None, None)),
                     now) for sid, name in studies]
