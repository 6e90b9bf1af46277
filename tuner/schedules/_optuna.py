"""The Optuna pruner of the schedules that pause: imported only when a study is opened."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from tuner.trial_schema import lineage


class RungPruner(optuna.pruners.BasePruner):
    """Stop a segment at each of its lineage's pause epochs (ASHA's rungs, PBT's
    generations), where the schedule pauses it; nowhere else."""

    def __init__(self, pause_epochs: Callable[[int], Sequence[int]]):
        self.pause_epochs = pause_epochs

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return trial.last_step in self.pause_epochs(lineage(trial))
