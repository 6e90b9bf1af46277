"""Population-based training (Jaderberg et al., "Population Based Training of Neural
Networks", 2017), on the pause-and-continue machinery of ASHA.

The population is the study's trials (members, one lineage each, one budget slot each).
Every ``interval`` epochs a member's segment pauses (PRUNED with ``paused_at``, the
generation's epoch) and leaves a snapshot of its checkpoint as of that epoch
(``trial-L-genG.pt``), so a donor that has already gone on still gives the weights it had.

A generation is decided once, by whichever worker first sees it complete: no member can
still join (every budget slot taken and its trial created, or the budget over) and no live
member is behind it (running, waiting, or paused at an earlier generation). Members that
diverged, failed for good or finished are out and block nothing. The decision is the
generation's ledger row (lineage -1), one row per member paused at it, and one continuation
each, recorded in one transaction (:func:`tuner.storage.record_first`):

- the bottom ``quantile`` EXPLOIT: the continuation carries a top-quantile donor's params,
  changed by :meth:`PBT.explore` (x0.8 or x1.2, or resampled with ``resample_probability``,
  clipped to the distribution), and the user attr ``pbt`` names the donor: the runner copies
  the donor's snapshot into the member's checkpoint before it resumes;
- the others go on with their own weights and params.

A member that pauses at a generation already decided (its retry came late) goes on with its
own weights. The user attr ``pbt`` of every continuation records the event (epoch, donor,
changes) and the whole hyperparameter schedule of its weights, through the exploit chain:
what ``tuner retrain`` replays. A decider that dies midway leaves the generation undecided,
and the next worker decides it the same way (the generator is seeded by the study's seed and
the generation).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from tuner import models, vocab
from tuner.schedules import register
from tuner.schedules._base import (
    PAUSED_ATTR,
    PBT_ATTR,
    Decision,
    Schedule,
    View,
    _Block,
    _known,
    continuation,
    is_paused,
)
from tuner.trial_schema import lineage

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

GENERATION = -1  # ``lineage`` of the ledger row that decides a whole generation
FACTORS = (0.8, 1.2)
# continuous training hyperparameters PBT perturbs when the study file names none
PBT_DEFAULT_PERTURB = ("lr", "weight_decay", "dropout", "momentum")
# hyperparameters of tuner's loop and models whose change keeps the weights usable
PBT_PERTURBABLE = frozenset({*PBT_DEFAULT_PERTURB, "l1", "label_smoothing", "gamma", "clip_norm",
                             "backbone_lr_scale"})


class SchedulerSpec(_Block):
    """The ``scheduler:`` block: a population (Jaderberg et al. 2017): ``population``
    members train side by side; every ``interval`` epochs the bottom ``quantile`` take the
    weights, optimizer state and hyperparameters of a top-quantile member (exploit) and
    perturb the hyperparameters named in ``perturb`` by x0.8 or x1.2, or resample them from
    their range with ``resample_probability`` (explore)."""

    name: str = "pbt"
    population: int = Field(default=8, ge=2, le=10_000)
    interval: int = Field(default=2, ge=1)
    quantile: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    # the hyperparameters to perturb [default: those of PBT_DEFAULT_PERTURB the space searches]
    perturb: list[str] | None = Field(default=None, min_length=1)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _known("scheduler", v)


def generations(interval: int, epochs: int) -> list[int]:
    """The epochs where members pause: every ``interval`` epochs below ``epochs``."""
    return list(range(interval, epochs, interval))


def schedule(t: FrozenTrial) -> list[dict[str, Any]]:
    """The hyperparameter schedule of ``t``'s weights: ``[{"from_epoch": 1, "params": ...,
    "lineage": L}, {"from_epoch": 3, "params": ...}]``, through every exploit of its lineage
    (the first segment's ``lineage`` is the member whose initial weights they are)."""
    rec = t.user_attrs.get(PBT_ATTR)
    if rec and rec.get("schedule"):
        return [dict(s) for s in rec["schedule"]]
    return [{"from_epoch": 1, "params": dict(t.params), "lineage": lineage(t)}]


def explore(params: dict[str, Any], dists: dict[str, Any], names: Sequence[str],
            resample_probability: float, rng: random.Random) -> tuple[dict[str, Any], dict]:
    """``params`` with each of ``names`` (that the trial has) scaled by 0.8 or 1.2, or, with
    ``resample_probability``, drawn anew from its distribution; clipped to its bounds (and
    its step). Returns the new params and the changes {name: [old, new]}."""
    from optuna.distributions import FloatDistribution, IntDistribution

    out, changes = dict(params), {}
    for name in names:
        d = dists.get(name)
        if name not in params or not isinstance(d, FloatDistribution | IntDistribution):
            continue
        old = params[name]
        if rng.random() < resample_probability:
            if d.log:
                new = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            else:
                new = rng.uniform(d.low, d.high)
        else:
            new = old * rng.choice(FACTORS)
        out[name] = new = clip(new, d)
        if new != old:
            changes[name] = [old, new]
    return out, changes


def clip(value: float, d: Any) -> float | int:
    """``value`` within the distribution ``d``'s bounds and on its step; an int for ints."""
    new = min(max(value, d.low), d.high)
    if d.step is not None:
        new = d.low + round((new - d.low) / d.step) * d.step
        new = min(max(new, d.low), d.high)
    return int(round(new)) if type(d).__name__ == "IntDistribution" else float(new)


def _own(t: FrozenTrial, g: int) -> dict[str, Any]:
    return {"epoch": g, "donor": None, "donor_trial": None, "changes": {},
            "schedule": schedule(t)}


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class PBT(Schedule):
    name = "pbt"
    summary = "a population: the bottom members take over the top ones' weights, perturbed"
    block = "scheduler"
    population = True
    keeps_snapshots = True

    # ---- the study file ----------------------------------------------------------------
    @classmethod
    def defaults(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The population is the trial budget and nothing is pruned, unless the file says
        otherwise (then :meth:`check` names the conflict)."""
        sched = raw["scheduler"]
        if "trials" not in raw and isinstance(sched.get("population", 8), int):
            raw = {**raw, "trials": sched.get("population", 8)}
        raw.setdefault("pruner", "none")
        return raw

    def check(self) -> None:
        s, spec, n = self.spec.scheduler, self.spec, self.name
        if s.interval >= spec.epochs:
            raise ValueError(f"scheduler: {n}'s interval ({s.interval}) must be below epochs "
                             f"({spec.epochs}), or no member ever exploits another")
        if spec.trials != s.population:
            raise ValueError(f"scheduler: {n}'s population ({s.population}) is the study's "
                             f"trials ({spec.trials}); make them equal, or remove trials:")
        if spec.pruner.name != "none":
            raise ValueError(f"scheduler: {n} replaces the pruner (bottom members take over top "
                             f"ones' weights); remove pruner: {spec.pruner.name}")
        if not spec.checkpoint:
            raise ValueError(f"scheduler: {n} continues members from their checkpoints; set "
                             "checkpoint: true")
        if spec.kfold:
            raise ValueError(f"scheduler: {n} exploits at epochs, and a k-fold study reports "
                             "folds; use a validation fraction")
        if spec.multi_objective:
            raise ValueError(f"scheduler: {n} ranks members by one learning curve; use it with "
                             "one objective")
        self.perturb()

    def perturb(self) -> list[str]:
        """The hyperparameters to perturb: the file's ``perturb:``, or the continuous ones of
        :data:`PBT_DEFAULT_PERTURB` that the space searches. Raises for one that cannot be."""
        s, spec = self.spec.scheduler, self.spec
        kind = {k: getattr(p, "type", "fixed") for k, p in spec.space.items()}
        if s.perturb is None:
            out = [k for k in PBT_DEFAULT_PERTURB if kind.get(k) in ("float", "int")]
            if not out:
                raise ValueError(f"scheduler: {self.name} has nothing to perturb: search one of "
                                 f"{', '.join(PBT_DEFAULT_PERTURB)} in space, or list "
                                 "scheduler.perturb")
            return out
        family = models.get(fam).knobs if (fam := models.family_of(spec.model)) else {}
        for name in s.perturb:
            changes_shape = (name in family and name not in PBT_PERTURBABLE) or (
                name in vocab.TRAINING_KNOBS and name not in PBT_PERTURBABLE)
            if changes_shape or kind.get(name) == "categorical":
                raise ValueError(
                    f"scheduler.perturb: {name} cannot be perturbed because it changes the "
                    "architecture or the training setup (a member takes over another's weights "
                    "and optimizer state, which must still fit); perturb continuous "
                    f"hyperparameters such as {', '.join(PBT_DEFAULT_PERTURB)}")
            if kind.get(name, "fixed") == "fixed":
                raise ValueError(f"scheduler.perturb: {name} is not searched; add it to space as "
                                 "a float range, or remove it from perturb")
        return list(s.perturb)

    def fuse_blocker(self) -> str | None:
        return f"scheduler: {self.name} pauses and exploits members one by one; use fuse: off"

    # ---- in the trial ------------------------------------------------------------------
    def pause_epochs(self, lineage: int) -> list[int]:
        return generations(self.spec.scheduler.interval, self.spec.epochs)

    snapshot_epochs = pause_epochs

    def pruner(self) -> optuna.pruners.BasePruner:
        from tuner.schedules._optuna import RungPruner

        return RungPruner(self.pause_epochs)

    def weights_from(self, trial: Any) -> tuple[int, int] | None:
        rec = trial.user_attrs.get(PBT_ATTR) or {}
        return None if rec.get("donor") is None else (int(rec["donor"]), int(rec["epoch"]))

    # ---- when a worker asks for work -----------------------------------------------------
    def explore(self, donor: FrozenTrial, view: View, g: int, rng: random.Random,
                chosen: list[dict[str, Any]]) -> tuple[dict[str, Any], dict]:
        """The params a bottom member goes on with after taking ``donor``'s weights at
        generation ``g``, and the changes {name: [old, new]}; ``chosen``: the params given to
        the members exploited before it in this generation."""
        s = self.spec.scheduler
        return explore(dict(donor.params), donor.distributions, self.perturb(),
                       s.resample_probability, rng)

    def _full(self, view: View) -> bool:
        """No member can join any more: every slot is taken by a created trial, or the budget
        is over (spent time, stopped early)."""
        st = view.budget
        if st.expired() or st.stopped is not None or st.hours_spent_out:
            return True
        return st.remaining == 0 and len(view.latest) >= st.taken

    def decisions(self, view: View) -> Iterator[Decision]:
        """Continue a late member, or decide the next complete generation."""
        gens = set(self.pause_epochs(0))
        paused = {n: t for n, t in view.latest.items()
                  if is_paused(t) and int(t.user_attrs[PAUSED_ATTR]) in gens}
        decided = view.decided if paused else set()
        for n, t in paused.items():  # late: its generation was decided without it
            g = int(t.user_attrs[PAUSED_ATTR])
            if (GENERATION, g) in decided and (n, g) not in decided:
                yield Decision(((n, g, t.number),), (continuation(t, record=_own(t, g)),))
        if not paused or not self._full(view):
            return
        open_gens = {int(t.user_attrs[PAUSED_ATTR]) for t in paused.values()} - {
            r for lin, r in decided if lin == GENERATION}
        if not open_gens:
            return
        g = min(open_gens)
        if any(t.state.name in ("RUNNING", "WAITING")
               or (is_paused(t) and int(t.user_attrs[PAUSED_ATTR]) < g)
               for t in view.latest.values()):
            return  # a member is behind the generation
        sign = -1 if self.maximize else 1
        members = sorted((t for t in paused.values() if int(t.user_attrs[PAUSED_ATTR]) == g),
                         key=lambda t: (sign * t.intermediate_values[g], lineage(t)))
        s = self.spec.scheduler
        k = min(len(members) // 2, max(1, int(len(members) * s.quantile))) \
            if len(members) > 1 else 0
        top, bottom = members[:k], members[len(members) - k:] if k else []
        rng = random.Random(f"{self.spec.seed}:{g}")
        conts, chosen = [], []
        for t in members:
            if t in bottom:
                donor = rng.choice(top)
                params, changes = self.explore(donor, view, g, rng, chosen)
                chosen.append(params)
                record = {"epoch": g, "donor": lineage(donor), "donor_trial": donor.number,
                          "changes": changes,
                          "schedule": [*schedule(donor), {"from_epoch": g + 1, "params": params}]}
                conts.append(continuation(t, params, donor.distributions, record))
            else:
                conts.append(continuation(t, record=_own(t, g)))
        # the generation's row, every member's and every continuation, in one transaction:
        # one worker wins them all (so the late-member rule never races the decision for a
        # member of it), and a decider killed midway leaves the generation undecided
        rows = ((GENERATION, g, -1), *((lineage(t), g, t.number) for t in members))
        yield Decision(rows, tuple(conts))

    def pending(self, view: View) -> bool:
        """Some member's last segment is paused: its generation is being decided (or will be
        once the others reach it), so the study is not over even if nothing runs or waits."""
        return any(is_paused(t) for t in view.latest.values())

    # ---- after the search --------------------------------------------------------------
    def describe(self, t: FrozenTrial) -> str:
        """Whose weights this segment took and which hyperparameters changed; "" for a
        member's first segment."""
        rec = t.user_attrs.get(PBT_ATTR)
        if not rec:
            return ""
        if rec.get("donor") is None:
            return f"e{rec['epoch']}: own weights"
        changes = ", ".join(f"{k} {_short(a)}->{_short(b)}" for k, (a, b) in rec["changes"].items())
        return (f"e{rec['epoch']}: weights of member {rec['donor']} (#{rec['donor_trial']})"
                + (f"; {changes}" if changes else ""))

    def columns(self, t: FrozenTrial) -> dict[str, Any]:
        return {"member": lineage(t), "pbt": self.describe(t)}

    def segments(self, t: FrozenTrial) -> list[dict[str, Any]] | None:
        return schedule(t)


register(PBT)

__all__ = ["FACTORS", "GENERATION", "PBT", "PBT_DEFAULT_PERTURB", "PBT_PERTURBABLE",
           "SchedulerSpec", "explore", "generations", "schedule"]
