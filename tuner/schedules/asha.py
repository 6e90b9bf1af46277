"""ASHA with promotion (Li et al., "A System for Massively Parallel Hyperparameter Tuning",
MLSys 2020): a trial that reaches a rung *pauses* instead of going on or being killed.

A rung segment ends as PRUNED with the user attr ``paused_at`` (the rung's epoch); its
checkpoint (one file per lineage) is kept. Promoting it enqueues a *continuation*: a WAITING
trial with the same params, the same lineage (so the same checkpoint), the whole learning
curve so far and ``promotion_of``; it runs in no budget slot. A promotion is one row of the
decisions ledger per (lineage, rung), inserted with its continuation in one transaction
(:func:`tuner.storage.record_first`), so one worker wins it and a worker that dies midway
leaves neither. Once nothing runs or waits and no new trial may start (``final``), each
rung's top 1/eta rounds up, so a study too small to fill its top rung still finishes a trial,
and every paused trial that can never be promoted is retired (a row with ``trial`` =
:data:`RETIRED`): its checkpoint may go, and a later ``tuner run --trials`` cannot promote it.

Known gap: a worker that dies after the checkpoint of a rung's epoch but before its report
loses that report (as any retry does), and the retry resumes past the rung without pausing
there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from tuner.schedules import register
from tuner.schedules._base import (
    PAUSED_ATTR,
    RETIRED,
    Decision,
    Schedule,
    View,
    continuation,
    is_paused,
    settled,
)
from tuner.trial_schema import lineage

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def rungs(min_epochs: int, reduction_factor: int, epochs: int) -> list[int]:
    """The epochs where a trial pauses: min_epochs * eta^k below ``epochs``."""
    out, r = [], min_epochs
    while r < epochs:
        out.append(r)
        r *= reduction_factor
    return out


def top(latest: dict[int, FrozenTrial], rung: int, eta: int, maximize: bool,
        final: bool = False) -> list[int]:
    """Lineages in the top 1/eta of ``rung``: of every lineage that reported at its epoch.
    ``final`` (no trial can join the rung any more): rounded up, so each rung promotes at
    least one and a small study still finishes a trial."""
    members = [(t.intermediate_values[rung], n) for n, t in latest.items()
               if rung in t.intermediate_values]
    members.sort(key=lambda m: (-m[0] if maximize else m[0], m[1]))
    k = -(-len(members) // eta) if final else len(members) // eta
    return [n for _, n in members[:k]]


class ASHA(Schedule):
    name = "asha"
    summary = "pause each trial at its rungs; promote the top 1/reduction_factor"

    # ---- the study file ----------------------------------------------------------------
    def check(self) -> None:
        p, spec = self.spec.pruner, self.spec
        if p.min_epochs >= spec.epochs:
            raise ValueError(f"pruner: {self.name}'s min_epochs ({p.min_epochs}) must be below "
                             f"epochs ({spec.epochs}); lower min_epochs or raise epochs")
        if not spec.checkpoint:
            raise ValueError(f"pruner: {self.name} resumes paused trials from their "
                             "checkpoints; set checkpoint: true")
        if spec.kfold:
            raise ValueError(f"pruner: {self.name} pauses at epochs, and a k-fold study reports "
                             "folds; use median or none with k-fold validation")
        if spec.multi_objective:
            raise ValueError(f"pruner: {self.name} ranks one learning curve; use it with one "
                             "objective")

    def fuse_blocker(self) -> str | None:
        return f"{self.name} pauses trials one by one; use pruner: median or none"

    # ---- in the trial ------------------------------------------------------------------
    def bracket(self, lineage: int) -> int:
        """The bracket of a lineage: its rungs, and the trials it is ranked among."""
        return 0

    def rungs(self, bracket: int) -> list[int]:
        p = self.spec.pruner
        return rungs(p.min_epochs, p.reduction_factor, self.spec.epochs)

    def pause_epochs(self, lineage: int) -> list[int]:
        return self.rungs(self.bracket(lineage))

    def pruner(self) -> optuna.pruners.BasePruner:
        from tuner.schedules._optuna import RungPruner

        return RungPruner(self.pause_epochs)

    # ---- when a worker asks for work -----------------------------------------------------
    def candidates(self, view: View, final: bool) -> list[FrozenTrial]:
        """Paused trials in the top 1/eta of their rung (among their bracket), not yet
        promoted or retired; the highest rung first (ASHA), the best first within a rung."""
        eta, out = self.spec.pruner.reduction_factor, []
        by_bracket: dict[int, dict[int, FrozenTrial]] = {}
        for n, t in view.latest.items():
            by_bracket.setdefault(self.bracket(n), {})[n] = t
        for b, members in sorted(by_bracket.items()):
            for rung in reversed(self.rungs(b)):
                for n in top(members, rung, eta, self.maximize, final):
                    t = members[n]
                    if (is_paused(t) and t.user_attrs[PAUSED_ATTR] == rung
                            and (n, rung) not in view.decided):
                        out.append(t)
        return out

    def decisions(self, view: View) -> Iterator[Decision]:
        """Promote the best promotable paused trial. ``final``: no new trial may start;
        rungs round their top up, once nothing runs or waits."""
        if view.final and not settled(view.trials):
            return
        for t in self.candidates(view, view.final):
            rung = int(t.user_attrs[PAUSED_ATTR])
            yield Decision(((lineage(t), rung, t.number),), (continuation(t),))

    def retirements(self, view: View) -> list[Decision]:
        """Once nothing runs or waits (and no new trial may start): every paused trial that
        is not promotable, for good; its checkpoint may go."""
        if not settled(view.trials):
            return []
        keep = {t.number for t in self.candidates(view, True)}
        out = []
        for n, t in view.latest.items():
            rung = int(t.user_attrs.get(PAUSED_ATTR, 0))
            if is_paused(t) and t.number not in keep and (n, rung) not in view.decided:
                out.append(Decision(((n, rung, RETIRED),), frees=(n,)))
        return out


register(ASHA)
