"""What a study looks like right now: counts, best, running trials and their workers,
budget and time left. Plain data for the CLI, the progress display and the Python API."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import schedules
from tuner.spec import StudySpec
from tuner.storage import (
    PROMOTION_OF_ATTR,
    BudgetState,
    all_studies,
    heartbeat_ages,
    is_paused,
    retired,
)
from tuner.study import SPEC_ATTR, WARM_START_ATTR, Handle, feasible, pareto_front, primary_value

__all__ = ["pareto_front", "primary_value", "snapshot", "studies", "trial_rows"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Running:
    number: int
    epoch: int
    last_value: float | None
    host: str | None
    pid: int | None
    device: str | None
    heartbeat_age_s: float | None


@dataclass(frozen=True)
class Snapshot:
    name: str
    direction: str
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    budget: BudgetState
    running: list[Running] = field(default_factory=list)
    eta_s: float | None = None
    last_activity: dt.datetime | None = None
    # where a warm-started study's first trials came from: from, storage, added, enqueued
    warm_start: dict[str, Any] | None = None

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)


def _best(spec: StudySpec, trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values and feasible(t)]
    if not done:
        return None
    pick = max if spec.direction_name == "maximize" else min
    return pick(done, key=lambda t: primary_value(spec, t))


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return None


def _last_activity(trials: list[FrozenTrial]) -> dt.datetime | None:
    stamps = [s for t in trials for s in (t.datetime_start, t.datetime_complete) if s]
    return max(stamps) if stamps else None


def snapshot(handle: Handle, with_heartbeats: bool = True) -> Snapshot:
    study = handle.study
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    promoted = {t.user_attrs[PROMOTION_OF_ATTR] for t in trials if PROMOTION_OF_ATTR in t.user_attrs}
    gone = retired(study) if any(is_paused(t) for t in trials) else set()
    for t in trials:
        # an ASHA rung segment is not a finished trial: PAUSED or PROMOTED until retired
        name = t.state.name
        if is_paused(t) and t.number not in gone:
            name = "PROMOTED" if t.number in promoted else "PAUSED"
        counts[name] = counts.get(name, 0) + 1
    ages: dict[int, float] = {}
    if with_heartbeats:
        ages = heartbeat_ages(study)
    running = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        worker = t.user_attrs.get("worker") or {}
        steps = sorted(t.intermediate_values)
        running.append(Running(
            t.number, steps[-1] if steps else 0,
            t.intermediate_values[steps[-1]] if steps else None,
            worker.get("host"), worker.get("pid"), worker.get("device"), ages.get(t.number),
        ))
    best = _best(handle.spec, trials)
    budget = handle.budget.state()
    durations = [d for t in trials if t.state in FINISHED and (d := _duration(t)) is not None]
    eta = None
    if durations and budget.remaining is not None:
        todo = budget.remaining + len(running) / 2
        eta = todo * (sum(durations) / len(durations)) / max(1, len(running))
    return Snapshot(
        name=study.study_name, direction=handle.spec.direction_name, counts=counts,
        best_value=primary_value(handle.spec, best) if best else None,
        best_trial=best.number if best else None,
        budget=budget, running=running, eta_s=eta, last_activity=_last_activity(trials),
        warm_start=study.user_attrs.get(WARM_START_ATTR),
    )


@dataclass(frozen=True)
class StudyRow:
    name: str
    counts: dict[str, int]
    best_value: float | None
    direction: str
    last_activity: dt.datetime | None
    tuner: bool


def studies(storage: optuna.storages.RDBStorage) -> list[StudyRow]:
    rows = []
    for s, trials in all_studies(storage):
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        direction = s.directions[0].name.lower()
        done = [t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values]
        best = (max(done) if direction == "maximize" else min(done)) if done else None
        rows.append(StudyRow(s.study_name, counts, best, direction, _last_activity(trials),
                             SPEC_ATTR in s.user_attrs))
    return rows


def trial_rows(study: optuna.Study, spec: StudySpec | None = None) -> list[dict[str, Any]]:
    """One flat row per trial: number, state (INFEASIBLE for a rejected configuration),
    the value (each objective its own column in a multi-objective study), params,
    duration, epochs, and notes."""
    rows = []
    names = spec.objective_names if spec is not None and spec.multi_objective else None
    trials = study.get_trials(deepcopy=False)
    promoted = {t.user_attrs[PROMOTION_OF_ATTR] for t in trials if PROMOTION_OF_ATTR in t.user_attrs}
    gone = retired(study) if any(is_paused(t) for t in trials) else set()
    sched = schedules.of(spec) if spec is not None else None
    for t in trials:
        if names is None:
            values: dict[str, Any] = {"value": t.values[0] if t.values else None}
        else:
            values = {n: (t.values[i] if t.values else None) for i, n in enumerate(names)}
        rows.append({
            "number": t.number,
            "state": _state(t, promoted, gone),
            **values,
            **{f"params_{k}": v for k, v in t.params.items()},
            "epochs": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
            "duration_s": round(d, 3) if (d := _duration(t)) is not None else None,
            "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            "retry_of": t.user_attrs.get("retry_of"),
            "repeat_of": t.user_attrs.get("repeat_of"),
            "promotion_of": t.user_attrs.get(PROMOTION_OF_ATTR),
            "fail_reason": t.user_attrs.get("fail_reason"),
            **({"constraints": t.constraints} if t.constraints else {}),
            **(sched.columns(t) if sched is not None else {}),
        })
    return rows


def _state(t: FrozenTrial, promoted: set[int], retired: set[int]) -> str:
    """The trial's state; INFEASIBLE for a rejected configuration; an ASHA rung segment is
    PAUSED until a continuation of it is queued, then PROMOTED; PRUNED once it is retired
    (the study ended without promoting it, and its checkpoint is gone)."""
    if not feasible(t):
        return "INFEASIBLE"
    if is_paused(t) and t.number not in retired:
        return "PROMOTED" if t.number in promoted else "PAUSED"
    return t.state.name
