"""Pruning multi-objective studies, which Optuna refuses (``Trial.report`` and
``should_prune`` raise ``NotImplementedError`` there; optuna #3450).

The primary objective's learning curve is written as the trial's intermediate values (the
storage itself takes them for any study), so every worker and the dashboard see it. To
decide, the study's own pruner (median, successive halving, hyperband) is run against a
*single-objective view* of the study: the same database rows, but one direction and each
finished trial's value being its primary objective. Pruners read only trials, directions
and system attrs through the storage, and write their rung attrs through it, so the view
needs nothing but a storage wrapper; everything stays in the one database.
"""

from __future__ import annotations

import copy
from collections.abc import Container
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


class _PrimaryStorage:
    """The study's storage, seen as a single-objective study on objective ``index``."""

    def __init__(self, inner: Any, index: int, direction: StudyDirection):
        self._inner, self._index, self._direction = inner, index, direction

    def __getattr__(self, name: str) -> Any:  # everything else, writes included, as is
        return getattr(self._inner, name)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return [self._direction]

    def _view(self, t: FrozenTrial) -> FrozenTrial:
        if t.values is None or len(t.values) == 1:
            return t
        v = copy.copy(t)
        v.values = [t.values[self._index]]  # a copy: the stored trial keeps its values
        return v

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return [self._view(t) for t in self._inner.get_all_trials(study_id, deepcopy, states)]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._view(self._inner.get_trial(trial_id))


def report_primary(trial: optuna.Trial, step: int, value: float) -> None:
    """Record ``value`` at ``step`` of the trial's primary curve (any study, even one with
    several objectives)."""
    trial.study._storage.set_trial_intermediate_value(trial._trial_id, step, value)
    trial._cached_frozen_trial.intermediate_values[step] = value  # as Trial.report keeps it


def should_prune_primary(trial: optuna.Trial, index: int, direction: str,
                         pruner: optuna.pruners.BasePruner) -> bool:
    """Whether ``pruner`` stops ``trial``, judged on objective ``index`` alone."""
    study = trial.study
    view = optuna.Study(
        study.study_name,
        storage=_PrimaryStorage(study._storage, index, StudyDirection[direction.upper()]),  # type: ignore[arg-type]
        sampler=study.sampler, pruner=pruner,
    )
    return pruner.prune(view, view._storage.get_trial(trial._trial_id))
