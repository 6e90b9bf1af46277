"""Population-based training (Jaderberg et al., "Population Based Training of Neural
Networks", 2017) on ASHA's machinery (:mod:`tuner.storage._asha`).

The population is the study's trials (members, one lineage each, one budget slot each).
Every ``interval`` epochs a member's segment ends as PRUNED with ``paused_at`` (the
generation's epoch); the paused member also leaves a snapshot of its checkpoint as of that
epoch (``trial-L-genG.pt``, written by :class:`tuner.objective.TrialRunner`), so a donor that
has already gone on still gives the weights it had.

A generation is decided once, by whichever worker first sees it complete: no member can
still join (every budget slot taken and its trial created, or the budget over) and no live
member is behind it (running, waiting, or paused at an earlier generation). Members that
diverged, failed for good or finished are out and block nothing. The worker that wins the
generation's rows of ``tuner_promotions`` ((-1, G) and one (lineage, G) per member paused at
G) ranks those members and enqueues one continuation each (a WAITING trial of its lineage,
``promotion_of`` the paused segment, in no budget slot), rows and continuations in one
transaction (:func:`tuner.storage._trials.decide`):

- the bottom ``quantile`` EXPLOIT: the continuation carries a top-quantile donor's params,
  perturbed (EXPLORE: x0.8 or x1.2, or resampled with ``resample_probability``, clipped to
  the distribution), and the user attr ``pbt`` names the donor: the runner copies the donor's
  snapshot into the member's checkpoint before it resumes;
- the others go on with their own weights and params.

A member that pauses at a generation already decided (its retry came late) goes on with
its own weights. The user attr ``pbt`` of every continuation records the event (epoch,
donor, changes) and the whole hyperparameter schedule of its weights, through the exploit
chain: what ``tuner retrain`` replays.

A decider that dies (or loses the database) midway leaves the generation undecided, not
half-continued, and the next worker that looks decides it (the same ranking, and the same
draws: the generator is seeded by the study's seed and the generation). Once, each
continuation was its own transaction: the members not yet enqueued stayed paused for good,
and the study waited on them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.storage._asha import (
    PAUSED_ATTR,
    PROMOTION_OF_ATTR,
    _decided,
    _latest,
    is_paused,
    promotions,
)
from tuner.storage._budget import Budget
from tuner.storage._retry import LINEAGE_ATTR, PBT_ATTR, lineage
from tuner.storage._trials import decide

GENERATION = -1  # ``lineage`` of the promotion row that decides a whole generation
FACTORS = (0.8, 1.2)


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


def history(trials: Sequence[FrozenTrial], t: FrozenTrial) -> list[dict[str, Any]]:
    """The PBT events of ``t``'s lineage up to ``t``, oldest first: {epoch, donor, changes}."""
    lin = lineage(t)
    out = []
    for s in sorted(trials, key=lambda s: s.number):
        rec = s.user_attrs.get(PBT_ATTR)
        if s.number <= t.number and lineage(s) == lin and rec and PROMOTION_OF_ATTR in s.user_attrs:
            out.append({k: rec[k] for k in ("epoch", "donor", "changes")})
    return out


def explore(params: dict[str, Any], dists: dict[str, BaseDistribution], names: Sequence[str],
            resample_probability: float, rng: random.Random) -> tuple[dict[str, Any], dict]:
    """``params`` with each of ``names`` (that the trial has) scaled by 0.8 or 1.2, or, with
    ``resample_probability``, drawn anew from its distribution; clipped to its bounds (and
    its step). Returns the new params and the changes {name: [old, new]}."""
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
        new = min(max(new, d.low), d.high)
        if d.step is not None:
            new = d.low + round((new - d.low) / d.step) * d.step
            new = min(max(new, d.low), d.high)
        new = int(round(new)) if isinstance(d, IntDistribution) else float(new)
        out[name] = new
        if new != old:
            changes[name] = [old, new]
    return out, changes


def pending(study: optuna.Study) -> bool:
    """Some member's last segment is paused: its generation is being decided (or will be once
    the others reach it), so the study is not over even if nothing runs or waits."""
    return any(is_paused(t) for t in _latest(study.get_trials(deepcopy=False)).values())


def _rank(members: list[FrozenTrial], g: int, maximize: bool) -> list[FrozenTrial]:
    """Best first at epoch ``g`` (ties: lower lineage first)."""
    return sorted(members, key=lambda t: ((-1 if maximize else 1) * t.intermediate_values[g],
                                          lineage(t)))


def _full(budget: Budget, latest: dict[int, FrozenTrial]) -> bool:
    """No member can join any more: every slot is taken by a created trial, or the budget is
    over (spent time, stopped early)."""
    st = budget.state()
    if st.expired() or st.stopped is not None or st.hours_spent_out:
        return True
    return st.remaining == 0 and len(latest) >= st.taken


def _continuation(t: FrozenTrial, params: dict[str, Any], dists: dict[str, BaseDistribution],
                  record: dict[str, Any]) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=TrialState.WAITING, params=params, distributions=dists,
        user_attrs={LINEAGE_ATTR: lineage(t), PROMOTION_OF_ATTR: t.number, PBT_ATTR: record},
        intermediate_values=t.intermediate_values,  # the member's own curve stays whole
    )


def _row(name: str, lin: int, g: int, trial: int) -> dict[str, Any]:
    return {"study_name": name, "lineage": lin, "rung": g, "trial": trial}


def _own(t: FrozenTrial, g: int) -> dict[str, Any]:
    return {"epoch": g, "donor": None, "donor_trial": None, "changes": {},
            "schedule": schedule(t)}


def advance(study: optuna.Study, engine: sa.Engine, budget: Budget, gens: Sequence[int], *,
            quantile: float, maximize: bool, perturb: Sequence[str], resample_probability: float,
            seed: int) -> bool:
    """Decide the next complete generation, or continue a late member; False if nothing is
    ready. Enqueues the continuations (see the module docstring)."""
    name = study.study_name
    trials = study.get_trials(deepcopy=False)
    latest = _latest(trials)
    decided = _decided(engine, name)
    gen_set = set(gens)
    paused = {n: t for n, t in latest.items()
              if is_paused(t) and int(t.user_attrs[PAUSED_ATTR]) in gen_set}
    for n, t in paused.items():  # late: its generation was decided without it
        g = int(t.user_attrs[PAUSED_ATTR])
        if (GENERATION, g) in decided and (n, g) not in decided and decide(
                study, promotions, [_row(name, n, g, t.number)],
                [_continuation(t, t.params, t.distributions, _own(t, g))], promoted=[t]):
            return True
    if not paused or not _full(budget, latest):
        return False
    open_gens = {int(t.user_attrs[PAUSED_ATTR]) for t in paused.values()} - {
        r for lin, r in decided if lin == GENERATION}
    if not open_gens:
        return False
    g = min(open_gens)
    behind = [t for t in latest.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)
              or (is_paused(t) and int(t.user_attrs[PAUSED_ATTR]) < g)]
    if behind:
        return False
    members = _rank([t for t in paused.values() if int(t.user_attrs[PAUSED_ATTR]) == g], g,
                    maximize)
    k = min(len(members) // 2, max(1, int(len(members) * quantile))) if len(members) > 1 else 0
    top, bottom = members[:k], members[len(members) - k:] if k else []
    rng = random.Random(f"{seed}:{g}")
    continuations = []
    for t in members:
        if t in bottom:
            donor = rng.choice(top)
            params, changes = explore(dict(donor.params), donor.distributions, perturb,
                                      resample_probability, rng)
            record = {"epoch": g, "donor": lineage(donor), "donor_trial": donor.number,
                      "changes": changes,
                      "schedule": [*schedule(donor), {"from_epoch": g + 1, "params": params}]}
            continuations.append(_continuation(t, params, dict(donor.distributions), record))
        else:
            continuations.append(_continuation(t, t.params, t.distributions, _own(t, g)))
    # the generation's row, every member's and every continuation, in one transaction: one
    # worker wins them all (so the late-member rule never races the decision for a member
    # of it), and a decider killed midway leaves the generation undecided, not half-continued
    rows = [_row(name, GENERATION, g, -1), *(_row(name, lineage(t), g, t.number) for t in members)]
    # False: another worker decided it
    return decide(study, promotions, rows, continuations, promoted=members)
