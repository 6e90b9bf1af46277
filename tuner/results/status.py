"""What a study looks like right now: counts, best, running trials and their workers,
budget and time left. Plain data for the CLI, the progress display, the report, the console
and the Python API.

What a trial *is* is decided here, once (:func:`trial_state`), and every view counts
through it (:func:`count`), so ``tuner studies``, ``status``, ``trials``, ``best`` and the
report agree. Optuna's five states are not enough: an ASHA rung segment or a PBT generation
segment ends PRUNED but is not a pruned trial, a rejected configuration ends PRUNED or
COMPLETE but is infeasible, a RUNNING trial whose worker stopped beating is lost.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import schedules
from tuner.config import StudySpec
from tuner.settings import Heartbeat
from tuner.storage import (
    BudgetState,
    all_studies,
    heartbeat_ages,
    is_paused,
    retired,
)
from tuner.study import (
    SPEC_ATTR,
    WARM_START_ATTR,
    Handle,
    feasible,
    nondominated,
    pareto_front,
    primary_value,
)
from tuner.trial_schema import (
    EPOCHS_ATTR,
    FAIL_REASON_ATTR,
    INFEASIBLE_ATTR,
    PAUSED_ATTR,
    PROMOTION_OF_ATTR,
    REPEAT_ATTR,
    RETRY_OF_ATTR,
    WORKER_ATTR,
)

__all__ = ["FINISHED", "STATE_ATTRS", "Facts", "Kind", "count", "count_lean", "facts",
           "pareto_front", "primary_value", "snapshot", "studies", "trial_rows", "trial_state"]



class Kind(StrEnum):
    """What a trial is, for every view. Exactly one applies, tested in this order:

    - ``WAITING``: queued (a retry, an ASHA promotion, a PBT continuation, an enqueued one);
    - ``LOST``: RUNNING, but its worker's last heartbeat is older than the grace period (it
      died; the next worker's reaper fails it and queues its retry);
    - ``RUNNING``: being trained, its worker beating;
    - ``FAIL``: failed (its ``fail_reason`` says why: an error, a lost worker, a stop);
    - ``REPEAT``: its configuration had finished already, whose result it reused (dedup);
      it spent a budget slot and trained nothing;
    - ``INFEASIBLE``: a constraint rejected it (before training, out of memory, or a
      violated constraint on a completed trial): never a best trial;
    - ``PAUSED``: an ASHA rung or PBT generation segment waiting for its decision;
    - ``PROMOTED``: such a segment whose lineage goes on in a later trial (its continuation);
    - ``PRUNED``: stopped early by the pruner (or an ASHA segment retired at its rung);
    - ``COMPLETE``: finished its epochs, feasible.

    A study's finished trials (:data:`FINISHED`) are the last four that end a lineage:
    each spent one budget slot."""

    WAITING = "WAITING"
    LOST = "LOST"
    RUNNING = "RUNNING"
    FAIL = "FAIL"
    REPEAT = "REPEAT"
    INFEASIBLE = "INFEASIBLE"
    PAUSED = "PAUSED"
    PROMOTED = "PROMOTED"
    PRUNED = "PRUNED"
    COMPLETE = "COMPLETE"


FINISHED = (Kind.COMPLETE, Kind.PRUNED, Kind.INFEASIBLE, Kind.REPEAT)

# the user attrs :func:`trial_state` reads (with the trial's state, number and constraints):
# a view that reads trials lean, as the console does, reads these
STATE_ATTRS = (REPEAT_ATTR, INFEASIBLE_ATTR, PAUSED_ATTR, PROMOTION_OF_ATTR)


@dataclass(frozen=True)
class Facts:
    """What :func:`trial_state` needs beyond the trial itself, read once per study: the
    paused segments continued (promoted) and retired, the RUNNING trials' heartbeat ages
    (empty: not read) and the grace period after which a silent worker is lost."""

    promoted: frozenset[int] = frozenset()
    retired: frozenset[int] = frozenset()
    heartbeat_ages: Mapping[int, float] = field(default_factory=dict)
    grace_period: float = Heartbeat.grace_period


def facts(study: optuna.Study, trials: Sequence[FrozenTrial], *, heartbeats: bool = True,
          grace_period: float | None = None) -> Facts:
    """The :class:`Facts` of ``study`` (whose trials were just read as ``trials``); only
    reads. ``heartbeats``: read the running trials' heartbeat ages (to tell LOST)."""
    paused = any(is_paused(t) for t in trials)
    running = any(t.state == TrialState.RUNNING for t in trials)
    return Facts(
        promoted=frozenset(t.user_attrs[PROMOTION_OF_ATTR] for t in trials
                           if PROMOTION_OF_ATTR in t.user_attrs),
        retired=frozenset(retired(study)) if paused else frozenset(),
        heartbeat_ages=heartbeat_ages(study) if heartbeats and running else {},
        grace_period=Heartbeat.grace_period if grace_period is None else grace_period,
    )


def count_lean(trials: Sequence[FrozenTrial], retired: frozenset[int],
               heartbeat_ages: Mapping[int, float], grace_period: float | None = None
               ) -> dict[str, int]:
    """:func:`count` for trials read lean (their :data:`STATE_ATTRS` only), given the paused
    ones retired and the running ones' heartbeat ages: the console's counts, which thus
    agree with every other view's."""
    known = Facts(promoted=frozenset(t.user_attrs[PROMOTION_OF_ATTR] for t in trials
                                     if PROMOTION_OF_ATTR in t.user_attrs),
                  retired=retired, heartbeat_ages=heartbeat_ages,
                  grace_period=Heartbeat.grace_period if grace_period is None else grace_period)
    return count(trials, known)


def trial_state(t: FrozenTrial, known: Facts) -> Kind:
    """What trial ``t`` is (see :class:`Kind`)."""
    if t.state == TrialState.WAITING:
        return Kind.WAITING
    if t.state == TrialState.RUNNING:
        age = known.heartbeat_ages.get(t.number)
        return Kind.LOST if age is not None and age > known.grace_period else Kind.RUNNING
    if t.state == TrialState.FAIL:
        return Kind.FAIL
    if REPEAT_ATTR in t.user_attrs:
        return Kind.REPEAT
    if not feasible(t):
        return Kind.INFEASIBLE
    if is_paused(t) and t.number not in known.retired:
        return Kind.PROMOTED if t.number in known.promoted else Kind.PAUSED
    return Kind.COMPLETE if t.state == TrialState.COMPLETE else Kind.PRUNED


def count(trials: Iterable[FrozenTrial], known: Facts) -> dict[str, int]:
    """Trials by :func:`trial_state` (the kinds that occur; ``.get(kind, 0)`` for others)."""
    counts: dict[str, int] = {}
    for t in trials:
        kind = trial_state(t, known).value
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def best_trials(trials: Iterable[FrozenTrial], known: Facts, directions: Sequence[str]
                ) -> list[FrozenTrial]:
    """The COMPLETE trials (feasible, no repeats) that no other dominates: the best ones of
    a single-objective study (ties included), the Pareto front of a multi-objective one."""
    done = [t for t in trials if trial_state(t, known) == Kind.COMPLETE and t.values]
    return nondominated(done, directions)


@dataclass(frozen=True)
class Running:
    number: int
    epoch: int
    last_value: float | None
    host: str | None
    pid: int | None
    device: str | None
    heartbeat_age_s: float | None
    # no heartbeat for longer than the grace period: its worker is gone (Kind.LOST)
    lost: bool = False


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
    # every objective's name and direction; a multi-objective study's Pareto front's size
    objectives: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()
    pareto_size: int | None = None

    @property
    def finished(self) -> int:
        return sum(self.counts.get(k, 0) for k in FINISHED)


def _best(spec: StudySpec, trials: list[FrozenTrial], known: Facts) -> FrozenTrial | None:
    done = [t for t in trials if trial_state(t, known) == Kind.COMPLETE and t.values]
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


def snapshot(handle: Handle, with_heartbeats: bool = True,
             grace_period: float | None = None) -> Snapshot:
    """The study now; only reads. ``grace_period``: seconds of heartbeat silence after which a
    running trial counts as LOST (the workers' ``--grace-period``)."""
    study, spec = handle.study, handle.spec
    trials = study.get_trials(deepcopy=False)
    known = facts(study, trials, heartbeats=with_heartbeats, grace_period=grace_period)
    counts = count(trials, known)
    running = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        worker = t.user_attrs.get(WORKER_ATTR) or {}
        steps = sorted(t.intermediate_values)
        running.append(Running(
            t.number, steps[-1] if steps else 0,
            t.intermediate_values[steps[-1]] if steps else None,
            worker.get("host"), worker.get("pid"), worker.get("device"),
            known.heartbeat_ages.get(t.number), trial_state(t, known) == Kind.LOST,
        ))
    best = _best(spec, trials, known)
    budget = handle.budget.state()
    durations = [d for t in trials if trial_state(t, known) in FINISHED
                 and (d := _duration(t)) is not None]
    # a lost trial (its worker stopped beating) is not running at any pace
    live = [t for t in trials if trial_state(t, known) != Kind.LOST]
    eta = _eta(handle.spec.epochs, budget, live, durations)
    return Snapshot(
        name=study.study_name, direction=spec.direction_name, counts=counts,
        best_value=primary_value(spec, best) if best else None,
        best_trial=best.number if best else None,
        budget=budget, running=running, eta_s=eta, last_activity=_last_activity(trials),
        warm_start=study.user_attrs.get(WARM_START_ATTR),
        objectives=tuple(spec.objective_names), directions=tuple(spec.directions),
        pareto_size=(len(best_trials(trials, known, spec.directions)) if spec.multi_objective
                     else None),
    )


def _eta(epochs: int, budget: BudgetState, trials: list[FrozenTrial],
         durations: list[float]) -> float | None:
    """Seconds until the study ends: its running trials' remaining epochs at their own pace,
    and the trials still to start at the mean pace, shared by the running workers. None
    when no new trial may start and none runs (stopped, spent), or when unknown."""
    now = dt.datetime.now()
    running_left = []
    for t in trials:
        if t.state != TrialState.RUNNING or t.datetime_start is None:
            continue
        done = len(t.intermediate_values)
        per_epoch = ((now - t.datetime_start).total_seconds() / done if done
                     else (sum(durations) / len(durations) / epochs if durations else None))
        if per_epoch is not None:
            running_left.append(max(0, epochs - done) * per_epoch)
    may_start = budget.stopped is None and not budget.hours_spent_out and not budget.expired()
    queued = None
    if may_start and budget.remaining is not None and durations:
        queued = budget.remaining * (sum(durations) / len(durations)) / max(1, len(running_left))
    if not running_left and queued is None:
        return None
    return max(max(running_left, default=0.0), queued or 0.0)


@dataclass(frozen=True)
class StudyRow:
    name: str
    counts: dict[str, int]
    best_value: float | None
    direction: str
    last_activity: dt.datetime | None
    tuner: bool
    # every objective's name (Optuna's metric names, else objective0, ...) and direction;
    # a multi-objective study's Pareto front's size (its best_value is None)
    objectives: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()
    pareto_size: int | None = None


def studies(storage: optuna.storages.RDBStorage, grace_period: float | None = None
            ) -> list[StudyRow]:
    """One row per study in ``storage``, counted as :func:`snapshot` counts; only reads."""
    rows = []
    for s, trials in all_studies(storage):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        known = facts(study, trials, grace_period=grace_period)
        directions = tuple(d.name.lower() for d in s.directions)
        names = tuple(study.metric_names or (f"objective{i}" for i in range(len(directions))))
        front = best_trials(trials, known, directions)
        single = len(directions) == 1
        rows.append(StudyRow(
            s.study_name, count(trials, known), front[0].values[0] if single and front else None,
            directions[0] if single else ", ".join(directions), _last_activity(trials),
            SPEC_ATTR in s.user_attrs, names, directions, None if single else len(front)))
    return rows


def trial_rows(study: optuna.Study, spec: StudySpec | None = None, *,
               grace_period: float | None = None) -> list[dict[str, Any]]:
    """One flat row per trial: number, state (:func:`trial_state`), the value (each
    objective its own column in a multi-objective study), params, duration, epochs, and
    notes."""
    rows = []
    names = spec.objective_names if spec is not None and spec.multi_objective else None
    trials = study.get_trials(deepcopy=False)
    known = facts(study, trials, grace_period=grace_period)
    sched = schedules.of(spec) if spec is not None else None
    for t in trials:
        if names is None:
            values: dict[str, Any] = {"value": t.values[0] if t.values else None}
        else:
            values = {n: (t.values[i] if t.values else None) for i, n in enumerate(names)}
        rows.append({
            "number": t.number,
            "state": trial_state(t, known).value,
            **values,
            **{f"params_{k}": v for k, v in t.params.items()},
            "epochs": t.user_attrs.get(EPOCHS_ATTR, len(t.intermediate_values)),
            "duration_s": round(d, 3) if (d := _duration(t)) is not None else None,
            "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            RETRY_OF_ATTR: t.user_attrs.get(RETRY_OF_ATTR),
            REPEAT_ATTR: t.user_attrs.get(REPEAT_ATTR),
            PROMOTION_OF_ATTR: t.user_attrs.get(PROMOTION_OF_ATTR),
            FAIL_REASON_ATTR: t.user_attrs.get(FAIL_REASON_ATTR),
            **({"constraints": t.constraints} if t.constraints else {}),
            **(sched.columns(t) if sched is not None else {}),
        })
    return rows


