"""Dedup: a configuration that already finished in the study is not trained again; its
result is reused (:func:`reuse_identical` raises :class:`~tuner.trials.outcome.Repeat`).
``dedup: false`` in the study file turns it off."""

from __future__ import annotations

import threading
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import storage
from tuner.config import StudySpec
from tuner.training.context import StopRequested
from tuner.trial_schema import INFEASIBLE_ATTR, METRICS_ATTR, REPEAT_ATTR
from tuner.trials.outcome import Outcome, Repeat

DEDUP_POLL_S = 0.5  # how often a trial waiting for an identical running one looks again
DEDUP_DRAW_WAIT_S = 10.0  # the longest a trial waits for an earlier one to draw its params


def reuse_identical(trial: optuna.Trial, spec: StudySpec, patience: storage.Patience,
                    stop: threading.Event, group: frozenset[int] = frozenset(),
                    seen: list[FrozenTrial] | None = None) -> None:
    """Raise :class:`Repeat` with the earlier result when a finished trial (complete or
    pruned) had exactly these params: grid and categorical spaces, and several workers
    asking at once, propose the same configuration again. While an earlier-numbered trial
    with these params is still running, wait for it (polling; the heartbeat keeps this trial
    alive): if it finishes, its result is reused; if it fails (its worker died), this trial
    trains. ``group``: the trials trained with this one (never waited for); ``seen``: the
    study's trials as the caller just read them, for the first look."""
    done = _finished_twins(trial, patience, stop, group, seen)
    if not done:
        return
    first = min(done, key=lambda t: t.user_attrs.get(REPEAT_ATTR, t.number))
    original = first.user_attrs.get(REPEAT_ATTR, first.number)
    attrs: dict[str, Any] = {REPEAT_ATTR: original}
    for key in (METRICS_ATTR, INFEASIBLE_ATTR):
        if key in first.user_attrs:
            attrs[key] = first.user_attrs[key]
    patience.call(lambda: storage.set_user_attrs(trial, attrs))
    for name, violation in first.constraints.items():
        trial.set_constraint(name, violation)
    why = f"repeat of trial {original}: its result is reused"
    if first.state == TrialState.COMPLETE and first.values:
        values = tuple(first.values)
        value = values[spec.objective_names.index(spec.metric_name) if len(values) > 1 else 0]
        raise Repeat(Outcome(TrialState.COMPLETE, value, values=values, repeat_of=original))
    raise Repeat(Outcome(TrialState.PRUNED, fail_reason=why, repeat_of=original))


def _finished_twins(trial: optuna.Trial, patience: storage.Patience, stop: threading.Event,
                    group: frozenset[int], seen: list[FrozenTrial] | None) -> list[FrozenTrial]:
    """The finished trials with ``trial``'s params, once none with them runs any more."""
    mine, lineage = trial.params, storage.lineage(trial)
    # an earlier trial asked at the same moment may not have drawn its params yet: give
    # it a moment to (else two workers asking at once would both train the same thing)
    unsure_until = time.monotonic() + DEDUP_DRAW_WAIT_S
    while True:
        ts = seen if seen is not None else patience.call(
            lambda: trial.study.get_trials(deepcopy=False))
        seen = None  # a second look (waiting for a running twin) reads the study again
        # a fused group's other members train together with this one: waiting for one
        # of them would wait for ever
        ts = [t for t in ts if t.number not in group or t.state != TrialState.RUNNING]
        # a retry or an ASHA continuation carries on its own lineage: not a repeat
        same = [t for t in ts if t.number != trial.number and t.params == mine
                and storage.lineage(t) != lineage]
        # an ASHA rung segment that paused is not a result: it may yet be promoted
        done = [t for t in same if t.state == TrialState.COMPLETE
                or (t.state == TrialState.PRUNED and not storage.is_paused(t))]
        undrawn = bool(mine) and time.monotonic() < unsure_until and any(
            t.state == TrialState.RUNNING and t.number < trial.number and not t.params
            for t in ts)
        if done or not (undrawn or any(t.state == TrialState.RUNNING
                                       and t.number < trial.number for t in same)):
            return done
        if stop.wait(DEDUP_POLL_S):
            raise StopRequested
