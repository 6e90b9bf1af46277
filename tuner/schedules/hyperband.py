"""Hyperband (Optuna's ``HyperbandPruner``): several successive-halving brackets with
different minimum epochs, each trial in one bracket; a trial is stopped, never paused."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.schedules import register
from tuner.schedules._base import Schedule

if TYPE_CHECKING:
    import optuna


class Hyperband(Schedule):
    name = "hyperband"
    summary = "successive halving in several brackets of minimum epochs"

    def pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        p = self.spec.pruner
        return optuna.pruners.HyperbandPruner(min_resource=p.min_epochs,
                                              max_resource=self.spec.kfold or self.spec.epochs,
                                              reduction_factor=p.reduction_factor)


register(Hyperband)
