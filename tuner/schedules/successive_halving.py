"""Asynchronous successive halving without promotion (Optuna's ``SuccessiveHalvingPruner``):
a trial goes on past a rung only if it is in the top 1/eta of that rung so far."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.schedules import register
from tuner.schedules._base import Schedule

if TYPE_CHECKING:
    import optuna


class SuccessiveHalving(Schedule):
    name = "successive_halving"
    summary = "stop a trial outside the top 1/reduction_factor at its rung"

    def pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        p = self.spec.pruner
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_epochs,
                                                      reduction_factor=p.reduction_factor)


register(SuccessiveHalving)
