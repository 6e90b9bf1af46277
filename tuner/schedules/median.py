"""The median rule (Optuna's ``MedianPruner``): stop a trial whose value at an epoch is worse
than the median of the other trials' at that epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.schedules import register
from tuner.schedules._base import Schedule

if TYPE_CHECKING:
    import optuna


class Median(Schedule):
    name = "median"
    summary = "stop a trial below the median of the others at the same epoch"

    def pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        p = self.spec.pruner
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials,
                                           n_warmup_steps=p.min_epochs)


register(Median)
