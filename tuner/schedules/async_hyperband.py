"""Asynchronous Hyperband with promotion (Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020, section 3.2): several ASHA brackets side by side, each
with its own minimum epochs, so a study hedges between stopping early (bracket 0 pauses
first at ``min_epochs``) and trusting early curves less (bracket s first at ``min_epochs *
reduction_factor^s``; the last bracket trains every trial to the end).

Each lineage belongs to one bracket, in turn (lineage modulo the number of brackets: the
paper's loop over brackets), and is paused, ranked and promoted among its own bracket's
trials only, with ASHA's ledger rows and rules (:mod:`tuner.schedules.asha`).

    pruner: {name: async_hyperband, min_epochs: 1, reduction_factor: 3}   # epochs: 9
    # bracket 0 pauses at 1 and 3, bracket 1 at 3, bracket 2 never
"""

from __future__ import annotations

from tuner.schedules import register
from tuner.schedules.asha import ASHA, rungs


class AsyncHyperband(ASHA):
    name = "async_hyperband"
    summary = "ASHA in several brackets of minimum epochs (asynchronous Hyperband)"

    def brackets(self) -> int:
        """s_max + 1: bracket s starts at min_epochs * eta^s, for every s whose start is at
        most ``epochs``."""
        p, n, start = self.spec.pruner, 0, self.spec.pruner.min_epochs
        while start <= self.spec.epochs:
            n, start = n + 1, start * p.reduction_factor
        return max(1, n)

    def bracket(self, lineage: int) -> int:
        return lineage % self.brackets()

    def rungs(self, bracket: int) -> list[int]:
        p = self.spec.pruner
        return rungs(p.min_epochs * p.reduction_factor ** bracket, p.reduction_factor,
                     self.spec.epochs)


register(AsyncHyperband)
