"""One study in detail, for the console's study page: its row (:mod:`._overview`), its
running trials with their curves and workers, ASHA's rungs, PBT's exploits, how many trials
trained fused, and the latest failures; a few aggregate queries straight from the tables.

    study_overview(engine, name)       one study: its row and its running trials with
                                       their curves, workers, rungs, PBT, fused, failures
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.trial import TrialState

from tuner.schedules import PAUSED_ATTR, PROMOTION_OF_ATTR, RETIRED
from tuner.storage._controls import Controls
from tuner.storage._ledger import promotions
from tuner.storage._overview import (
    _IV,
    _S,
    _T,
    _UA,
    Classify,
    StudyRow,
    _counts,
    _has,
    _heartbeat_ages,
    _row,
    _times,
    optuna_states,
)
from tuner.storage._retry import LINEAGE_ATTR, PBT_ATTR
from tuner.trial_schema import FAIL_REASON_ATTR, FUSED_ATTR, STATE_ATTR, WORKER_ATTR


@dataclass
class RunningTrial:
    number: int
    started: dt.datetime | None
    worker: dict[str, Any]
    heartbeat_age_s: float | None
    curve: list[tuple[int, float]]
    fused: int | None
    stop_asked: bool


@dataclass
class StudyDetail:
    row: StudyRow
    running: list[RunningTrial]
    rungs: list[dict[str, Any]]  # ASHA: epoch, paused, promoted, retired
    # a population's exploits: trial, member, epoch, donor, donor_trial, changes
    lineage: list[dict[str, Any]]
    failures: list[dict[str, Any]]  # the latest failed trials and why
    fused_trials: int


def study_overview(engine: sa.Engine, name: str, failures: int = 10,
                   classify: Classify = optuna_states, attrs: tuple[str, ...] = ()
                   ) -> StudyDetail | None:
    """One study in detail (None: no study of that name); counted as in
    :func:`studies_overview`."""
    now = time.time()
    with engine.connect() as conn:
        conn.info.pop("tuner_tables", None)  # read afresh: a pooled connection keeps its info
        sid = conn.execute(sa.select(_S.c.study_id).where(_S.c.study_name == name)).scalar()
        if sid is None:
            return None
        row = _row(conn, sid, name, _counts(conn, classify, attrs, sid).get(sid, {}),
                   _times(conn, sid).get(sid, (None, None, None)), now)
        return StudyDetail(row, _running(conn, sid, row.controls), _rungs(conn, sid, name),
                           _lineage(conn, sid), _failures(conn, sid, failures), _fused(conn, sid))


def _attrs(conn: sa.Connection, trial_ids: list[int], keys: tuple[str, ...]
           ) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    if not trial_ids:
        return out
    for tid, key, value in conn.execute(
            sa.select(_UA.c.trial_id, _UA.c.key, _UA.c.value_json)
            .where(_UA.c.trial_id.in_(trial_ids)).where(_UA.c.key.in_(keys))):
        out.setdefault(tid, {})[key] = json.loads(value)
    return out


def _running(conn: sa.Connection, study_id: int, ctl: Controls) -> list[RunningTrial]:
    rows = conn.execute(sa.select(_T.c.trial_id, _T.c.number, _T.c.datetime_start)
                        .where(_T.c.study_id == study_id)
                        .where(_T.c.state == TrialState.RUNNING).order_by(_T.c.number)).all()
    ids = [r[0] for r in rows]
    if not ids:
        return []
    beats = _heartbeat_ages(conn, ids)
    curves: dict[int, list[tuple[int, float]]] = {}
    for tid, step, value in conn.execute(
            sa.select(_IV.c.trial_id, _IV.c.step, _IV.c.intermediate_value)
            .where(_IV.c.trial_id.in_(ids)).order_by(_IV.c.trial_id, _IV.c.step)):
        if value is not None:
            curves.setdefault(tid, []).append((int(step), float(value)))
    attrs = _attrs(conn, ids, (WORKER_ATTR, FUSED_ATTR))
    return [RunningTrial(n, start, attrs.get(tid, {}).get(WORKER_ATTR) or {},
                         beats.get(tid), curves.get(tid, []),
                         attrs.get(tid, {}).get(FUSED_ATTR), n in ctl.stop_trials)
            for tid, n, start in rows]


def _rungs(conn: sa.Connection, study_id: int, name: str) -> list[dict[str, Any]]:
    paused: dict[int, int] = {}
    for value, n in conn.execute(
            sa.select(_UA.c.value_json, sa.func.count()).join(_T, _T.c.trial_id == _UA.c.trial_id)
            .where(_T.c.study_id == study_id).where(_UA.c.key == PAUSED_ATTR)
            .group_by(_UA.c.value_json)):
        paused[int(json.loads(value))] = n
    if not paused:
        return []
    p = promotions.c
    decided: dict[int, list[int]] = {}
    if _has(conn, promotions):
        for rung, trial in conn.execute(sa.select(p.rung, p.trial)
                                        .where(p.study_name == name)):
            decided.setdefault(int(rung), []).append(trial)
    promoted_rows = conn.execute(
        sa.select(sa.func.count()).select_from(_UA).join(_T, _T.c.trial_id == _UA.c.trial_id)
        .where(_T.c.study_id == study_id).where(_UA.c.key == PROMOTION_OF_ATTR)).scalar_one()
    out = []
    for epoch in sorted(paused):
        rows = decided.get(epoch, [])
        out.append({"epoch": epoch, "paused": paused[epoch],
                    "promoted": sum(1 for t in rows if t != RETIRED),
                    "retired": sum(1 for t in rows if t == RETIRED)})
    if out and not decided:  # PBT pauses too (its generations), with no promotion rows
        out[0]["continuations"] = promoted_rows
    return out


def _lineage(conn: sa.Connection, study_id: int, limit: int = 300) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(_T.c.trial_id, _T.c.number, _UA.c.value_json)
        .join(_UA, _UA.c.trial_id == _T.c.trial_id).where(_T.c.study_id == study_id)
        .where(_UA.c.key == PBT_ATTR).order_by(_T.c.number.desc()).limit(limit)).all()
    lineage = _attrs(conn, [r[0] for r in rows], (LINEAGE_ATTR,))
    out = []
    for tid, number, value in reversed(rows):
        rec = json.loads(value) or {}
        out.append({"trial": number, "member": lineage.get(tid, {}).get(LINEAGE_ATTR),
                    "epoch": rec.get("epoch"), "donor": rec.get("donor"),
                    "donor_trial": rec.get("donor_trial"), "changes": rec.get("changes") or {}})
    return out


def _failures(conn: sa.Connection, study_id: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(_T.c.trial_id, _T.c.number, _T.c.datetime_complete)
                        .where(_T.c.study_id == study_id).where(_T.c.state == TrialState.FAIL)
                        .order_by(_T.c.number.desc()).limit(limit)).all()
    attrs = _attrs(conn, [r[0] for r in rows], (FAIL_REASON_ATTR, STATE_ATTR))
    return [{"trial": n, "at": at, "reason": attrs.get(tid, {}).get(FAIL_REASON_ATTR),
             "state": attrs.get(tid, {}).get(STATE_ATTR)} for tid, n, at in rows]


def _fused(conn: sa.Connection, study_id: int) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(_UA).join(_T, _T.c.trial_id == _UA.c.trial_id)
        .where(_T.c.study_id == study_id).where(_UA.c.key == "fused")).scalar_one()
