"""What the console says about a study, as plain JSON-able dicts: its state in a word and
why, its budget, workers, running trials, rungs, PBT lineage and failures.

The states of a study (:func:`study_state`) and of a trial segment are decided here, in one
place each."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from optuna.trial import FrozenTrial

from tuner.results.status import FINISHED, Kind, count_lean
from tuner.settings import Heartbeat
from tuner.storage import StudyDetail, StudyRow, WorkerRow

# a worker silent for longer than this is lost (tuner's default grace period)
LOST_AFTER_S = Heartbeat().grace_period

# a trial count's name on the page, in the order shown: every kind of tuner.results.status.trial_state,
# counted by it (classify), so the page agrees with `tuner studies` and `tuner status`
COUNTED = ((Kind.COMPLETE, "complete"), (Kind.PRUNED, "pruned"), (Kind.PAUSED, "paused"),
           (Kind.PROMOTED, "promoted"), (Kind.INFEASIBLE, "infeasible"),
           (Kind.REPEAT, "repeated"), (Kind.RUNNING, "running"), (Kind.LOST, "lost"),
           (Kind.WAITING, "waiting"), (Kind.FAIL, "failed"))


def classify(trials: list[FrozenTrial], retired: frozenset[int], ages: dict[int, float]
             ) -> dict[str, int]:
    """The overview's trials by :func:`tuner.results.status.trial_state`, a worker silent for
    :data:`LOST_AFTER_S` lost."""
    return count_lean(trials, retired, ages, LOST_AFTER_S)


def _running(row: StudyRow) -> int:
    """Trials in RUNNING state, their workers alive or lost."""
    return row.counts.get(Kind.RUNNING, 0) + row.counts.get(Kind.LOST, 0)


def live(workers: list[WorkerRow], now: float) -> list[WorkerRow]:
    return [w for w in workers if now - w.seen <= LOST_AFTER_S]


def study_state(row: StudyRow, now: float | None = None) -> tuple[str, str]:
    """(state, why): ready, running, paused, stopping, stopped, stopped early, finished, or
    crashed (no live worker, and trials left to run)."""
    now = time.time() if now is None else now
    c, b, n = row.controls, row.budget, row.counts
    alive = live(row.workers, now)
    running = _running(row)
    busy = running > 0 and bool(alive)
    if c.stop is not None:
        return ("stopping" if busy else "stopped"), c.stop
    if b is not None and b.stopped is not None:
        return ("stopping" if busy else "stopped early"), b.stopped
    if c.paused:
        return "paused", f"{running} trial(s) finishing" if running else "no trial runs"
    if alive:
        return "running", f"{len(alive)} worker(s)"
    left = _trials_left(row, now)
    if running:
        return "crashed", f"{running} running trial(s) lost their workers"
    if left and sum(n.values()) == 0:
        return "ready", "no worker has joined yet"
    if left:
        return "crashed", f"no live worker and {_left_words(row)} left"
    return "finished", _why_finished(row, now)


def _trials_left(row: StudyRow, now: float) -> bool:
    b = row.budget
    if row.counts.get(Kind.WAITING, 0):
        return b is None or not b.expired(now)
    if b is None:
        return False
    if b.expired(now) or b.hours_spent_out:
        return False
    return b.remaining is None or b.remaining > 0


def _left_words(row: StudyRow) -> str:
    b, waiting = row.budget, row.counts.get(Kind.WAITING, 0)
    parts = []
    if b is not None and b.remaining:
        parts.append(f"{b.remaining} trial(s)")
    if waiting:
        parts.append(f"{waiting} waiting")
    return " and ".join(parts) or "trials"


def _why_finished(row: StudyRow, now: float) -> str:
    b = row.budget
    if b is None:
        return "not a tuner study" if row.spec is None else "done"
    if b.expired(now):
        return "time budget spent"
    if b.hours_spent_out:
        return f"device-hours spent ({b.hours_spent:.3g} h)"
    return "trial budget spent"


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds")


def _objectives(row: StudyRow) -> list[str]:
    spec = row.spec or {}
    if spec.get("metric_names"):
        return list(spec["metric_names"])
    objs = spec.get("objectives")
    if objs:
        return [o.get("metric", "?") if isinstance(o, dict) else str(o) for o in objs]
    return [spec.get("metric") or "value"]


def time_left(row: StudyRow, state: str, now: float) -> float | None:
    """Seconds until the study is done, from the recent mean trial time, the trials left and
    the live workers; capped by its deadline. 0 once it ended; None when unknown (paused,
    crashed, no trial finished yet, no trial limit)."""
    if state in ("finished", "stopped", "stopped early"):
        return 0.0
    if state in ("paused", "crashed", "ready"):
        return None
    b = row.budget
    by_deadline = None if b is None or b.deadline is None else max(0.0, b.deadline - now)
    estimate = None
    if b is not None and b.remaining is not None and row.mean_duration_s:
        workers = max(1, len(live(row.workers, now)))
        todo = b.remaining + row.counts.get(Kind.WAITING, 0) + _running(row) / 2
        estimate = todo * row.mean_duration_s / workers
    if state == "stopping":
        estimate = row.mean_duration_s and min(row.mean_duration_s, 60.0)
    options = [x for x in (estimate, by_deadline) if x is not None]
    return min(options) if options else None


def summary(row: StudyRow, now: float | None = None) -> dict[str, Any]:
    """One study, for the studies list."""
    now = time.time() if now is None else now
    state, why = study_state(row, now)
    b = row.budget
    n = row.counts
    finished = sum(n.get(k, 0) for k in FINISHED)
    return {
        "name": row.name, "study_id": row.study_id, "tuner": row.spec is not None,
        "state": state, "why": why,
        "counts": {label: n.get(kind, 0) for kind, label in COUNTED},
        "finished": finished, "target": None if b is None else b.target,
        "taken": None if b is None else b.taken,
        "objectives": _objectives(row), "directions": row.directions,
        "best": row.best, "best_trial": row.best_trial, "front": row.front,
        "workers_alive": len(live(row.workers, now)),
        "elapsed_s": _elapsed(row, state, now),
        "time_left_s": time_left(row, state, now),
        "deadline_in_s": None if b is None or b.deadline is None else b.deadline - now,
        "hours_spent": None if b is None else b.hours_spent,
        "hours_left": None if b is None else b.hours_left,
        "hours_target": None if b is None or b.seconds_target is None
        else b.seconds_target / 3600,
        "last_activity": _iso(row.last_activity),
        "idle_s": None if row.last_activity is None else _since(row.last_activity, now),
        "paused": row.controls.paused, "stop": row.controls.stop,
        "epochs": (row.spec or {}).get("epochs"),
    }


def _elapsed(row: StudyRow, state: str, now: float) -> float | None:
    """Seconds from the first trial to now, or to the last activity once the study ended."""
    if row.first_start is None:
        return None
    if state in ("finished", "stopped", "stopped early", "crashed") and row.last_activity:
        return max(0.0, (row.last_activity - row.first_start).total_seconds())
    return _since(row.first_start, now)


def _since(t: dt.datetime, now: float) -> float:
    """Seconds from ``t`` (a naive local datetime, as Optuna stores them) to ``now``."""
    return max(0.0, now - t.timestamp())


def detail(d: StudyDetail, now: float | None = None) -> dict[str, Any]:
    """One study in full, for its page."""
    now = time.time() if now is None else now
    out = summary(d.row, now)
    by_trial = {w.trial: w for w in d.row.workers if w.trial is not None}
    # a trial started since its worker's last check-in names its worker itself
    on = {(r.worker.get("host"), r.worker.get("pid")): r.number for r in d.running}
    out["workers"] = [{
        "host": w.host, "pid": w.pid, "device": w.device,
        "trial": (trial := w.trial if w.trial is not None else on.get((w.host, w.pid))),
        "epoch": next((r.curve[-1][0] for r in d.running if r.number == trial and r.curve),
                      None),
        "heartbeat_age_s": max(0.0, now - w.seen), "lost": now - w.seen > LOST_AFTER_S,
    } for w in d.row.workers]
    out["running"] = [{
        "number": r.number, "host": r.worker.get("host"), "pid": r.worker.get("pid"),
        "device": r.worker.get("device"), "heartbeat_age_s": r.heartbeat_age_s,
        "lost": r.heartbeat_age_s is not None and r.heartbeat_age_s > LOST_AFTER_S,
        "epoch": r.curve[-1][0] if r.curve else 0, "curve": r.curve, "fused": r.fused,
        "stop_asked": r.stop_asked,
        "group": None if (w := by_trial.get(r.number)) is None else w.worker,
    } for r in d.running]
    # a fused group: trials running together in one worker process
    groups: dict[tuple[Any, Any], list[int]] = {}
    for r in d.running:
        groups.setdefault((r.worker.get("host"), r.worker.get("pid")), []).append(r.number)
    out["fused_groups"] = [{"host": h, "pid": p, "trials": ns}
                           for (h, p), ns in groups.items() if len(ns) > 1]
    out["fused_trials"] = d.fused_trials
    out["rungs"] = d.rungs
    out["lineage"] = d.lineage
    out["failures"] = [{**f, "at": _iso(f["at"])} for f in d.failures]
    return out
