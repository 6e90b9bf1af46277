"""When a study should end before its budget is spent: ``stop: {patience: N}`` and
``stop: {terminator: true}``.

A worker asks :func:`why_stop` after each trial it finishes; the first one that gets a reason
writes it into the study's budget row (:meth:`tuner.storage.Budget.stop`), where every
worker's next ``acquire`` sees it, so the decision is study-wide and a worker joining later
does not start the study again. Both rules read the study's trials alone, so any worker
reaches the same decision.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config import StudySpec
from tuner.storage import is_paused
from tuner.study import PATIENCE_FROM_ATTR, feasible, grid_points, grid_size, primary_value

log = logging.getLogger("tuner")

__all__ = ["GRID_EXHAUSTED", "grid_reason", "patience_reason", "terminator_reason", "why_stop"]

# the reason a grid search ends once every point was tried
GRID_EXHAUSTED = "grid exhausted"


def _finished_in_order(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Complete and pruned trials in the order they finished; an ASHA rung or PBT generation
    segment that paused is not a finished trial (its member goes on, or is retired)."""
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and not is_paused(t)]
    return sorted(done, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))


def patience_reason(spec: StudySpec, trials: list[FrozenTrial],
                    counted_from: int = 0) -> str | None:
    """A reason when ``patience`` finished trials (complete or pruned), counted from the
    first completed one, in the order they finished, have not improved the best value.
    ``counted_from``: only trials numbered from there on count (a study stopped by patience
    and given more trials runs them; the best is still the whole study's)."""
    n = spec.stop.patience
    if n is None:
        return None
    better = (lambda a, b: a > b) if spec.direction_name == "maximize" else (lambda a, b: a < b)
    best: float | None = None
    best_trial, since = None, 0
    for t in _finished_in_order(trials):
        value = primary_value(spec, t) if t.state == TrialState.COMPLETE and feasible(t) else None
        if value is not None and (best is None or better(value, best)):
            best, best_trial, since = value, t.number, 0
        elif best is not None and t.number >= counted_from:
            since += 1
    if best is not None and since >= n:
        return (f"patience: {since} finished trials did not improve the best "
                f"{spec.metric_name} {best:.6g} (trial {best_trial})")
    return None


def terminator_reason(spec: StudySpec, study: optuna.Study) -> str | None:
    """A reason when Optuna's Terminator says the regret bound fell below the statistical
    error of the best trial (it needs 20 completed trials first)."""
    if not spec.stop.terminator:
        return None
    from optuna import terminator as tm

    with warnings.catch_warnings():  # the terminator is "experimental" in Optuna
        warnings.simplefilter("ignore")
        try:
            if _terminator(spec, tm).should_terminate(study):
                n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                return (f"terminator: the regret bound fell below the best trial's "
                        f"statistical error after {n} completed trials")
        except Exception as e:  # a fit that fails is no reason to stop, nor to fail a worker
            log.warning("the terminator could not judge the study (%s); it goes on", e)
    return None


def _terminator(spec: StudySpec, tm: Any) -> Any:
    """With k-fold validation, the error of the best trial is the spread of its fold scores
    (Optuna's cross-validation evaluator; the folds are reported by the trial runner).
    Without, Optuna's median evaluator: the threshold is a small fraction of the regret bounds
    of the first trials (so it needs 30 trials before it can stop)."""
    if spec.kfold:
        return tm.Terminator(error_evaluator=tm.CrossValidationErrorEvaluator())
    return tm.Terminator(error_evaluator=tm.MedianErrorEvaluator(tm.RegretBoundEvaluator()))


def grid_reason(spec: StudySpec, trials: list[FrozenTrial]) -> str | None:
    """A reason once every point of a grid search's grid has a finished trial (Optuna's
    grid sampler would then draw points again)."""
    size = grid_size(spec)
    if size is None or len(grid_points(trials, finished=True)) < size:
        return None
    return f"{GRID_EXHAUSTED}: every one of its {size} points was tried"


def why_stop(spec: StudySpec, study: optuna.Study) -> str | None:
    """Why the study should stop now, or None."""
    if spec.stop.patience is None and not spec.stop.terminator and spec.sampler.name != "grid":
        return None
    trials = study.get_trials(deepcopy=False)
    counted_from = int(study.user_attrs.get(PATIENCE_FROM_ATTR, 0)) if spec.stop.patience else 0
    return (grid_reason(spec, trials) or patience_reason(spec, trials, counted_from)
            or terminator_reason(spec, study))
