"""Warm start: a new study begins from an earlier one (``tuner run new.yaml --from OLD``).

When both studies train the same data and model for the same epochs towards the same
objectives, the old study's completed trials whose params fit the new space become completed
trials of the new one (``Study.add_trials``): the sampler learns from them and no budget is
spent. Otherwise ``--enqueue-top K`` enqueues the old study's K best configurations (their
params that fit the new space) as the new study's first trials. Either way the new study
records where its trials came from (:data:`tuner.study.WARM_START_ATTR`), which
``tuner status`` shows.

Everything is planned (:func:`plan`) before the new study is written, so a misfit is one
error and an untouched storage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from tuner import space
from tuner.errors import SpecError
from tuner.spec import CategoricalParam, Fixed, StudySpec
from tuner.study import WARM_START_ATTR, Handle, feasible, primary_value

__all__ = ["Plan", "apply", "plan"]

FROM_ATTR = "warm_start_from"
# what must match for an old trial's result to stand for a trial of the new study
_SAME = ("data", "data_as", "model", "trainer", "task", "validation", "epochs", "amp")


class _Misfit(Exception):
    pass


class _Fit:
    """Stands in for a trial in :func:`tuner.space.suggest`: answers each suggestion with
    the old trial's value, and records the new space's distribution for it."""

    def __init__(self, params: dict[str, Any]):
        self.params = params
        self.distributions: dict[str, BaseDistribution] = {}

    def _take(self, name: str, dist: BaseDistribution, ok: bool | None = None) -> Any:
        if name not in self.params:
            raise _Misfit(name)
        v = self.params[name]
        if isinstance(dist, CategoricalDistribution):
            ok = v in dist.choices
        elif isinstance(dist, FloatDistribution | IntDistribution):
            ok = isinstance(v, int | float) and dist.low <= v <= dist.high
            if ok and dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
                k = (v - dist.low) / dist.step
                ok = math.isclose(k, round(k), abs_tol=1e-8)
        if not ok:
            raise _Misfit(name)
        self.distributions[name] = dist
        return v

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False,
                      step: float | None = None) -> float:
        return self._take(name, FloatDistribution(low, high, log=log, step=step))

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False,
                    step: int = 1) -> int:
        return self._take(name, IntDistribution(low, high, log=log, step=step))

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self._take(name, CategoricalDistribution(choices))


def _fit(spec: StudySpec, params: dict[str, Any]) -> dict[str, BaseDistribution] | None:
    """The new space's distributions of ``params``, or None when they do not fit it."""
    f = _Fit(params)
    try:
        space.suggest(f, spec)  # type: ignore[arg-type]  # duck-typed: suggest_* only
    except _Misfit:
        return None
    return f.distributions


def compatible(old: StudySpec, new: StudySpec) -> list[str]:
    """What differs between the two studies' training (empty: results carry over)."""
    diff = [k for k in _SAME if getattr(old, k) != getattr(new, k)]
    if old.objective_names != new.objective_names or old.directions != new.directions:
        diff.append("objectives")
    return diff


@dataclass(frozen=True)
class Plan:
    source: str
    storage: str
    add: list[FrozenTrial] = field(default_factory=list)
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)


def plan(old: Handle, new: StudySpec, *, storage: str, enqueue_top: int | None) -> Plan:
    """What the new study takes from ``old``. Raises :class:`SpecError` (nothing written yet)
    when nothing can be taken."""
    done = [t for t in old.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and feasible(t)]
    differs = compatible(old.spec, new)
    if not differs:
        add = []
        for t in done:
            if (dists := _fit(new, t.params)) is not None:
                add.append(optuna.trial.create_trial(
                    params={k: t.params[k] for k in dists}, distributions=dists,
                    values=list(t.values), intermediate_values=dict(t.intermediate_values),
                    user_attrs={**{k: v for k, v in t.user_attrs.items()
                                   if k in ("metrics", "epochs_run")},
                                FROM_ATTR: f"{old.name}#{t.number}"},
                ))
        if add or enqueue_top is None:
            if not add:
                raise SpecError(f"--from {old.name}: none of its {len(done)} completed trials "
                                "fits the new space; widen the space, or pass --enqueue-top K")
            return Plan(old.name, storage, add=add)
    if enqueue_top is None:
        raise SpecError(f"--from {old.name}: it trained differently ({', '.join(differs)} "
                        "differ), so its results cannot be reused; pass --enqueue-top K to "
                        "start from its K best configurations")
    # ranked by the old study's own primary value: its best are the best guesses
    sign = -1.0 if old.spec.direction_name == "maximize" else 1.0
    ranked = sorted(done, key=lambda t: sign * (primary_value(old.spec, t) or 0.0))
    enqueue = []
    for t in ranked:
        fits = {k: v for k, v in t.params.items() if _fit_one(new, k, v)}
        if fits and fits not in enqueue:
            enqueue.append(fits)
        if len(enqueue) == enqueue_top:
            break
    if not enqueue:
        raise SpecError(f"--from {old.name}: no configuration of it fits the new space; "
                        "widen the space or start without --from")
    return Plan(old.name, storage, enqueue=enqueue, differs=differs)


def _fit_one(spec: StudySpec, name: str, value: Any) -> bool:
    """Whether ``name=value`` is a value the new space can take (checked on its own)."""
    base = name.rsplit("_", 1)[0] if name not in spec.space else name
    p = spec.space.get(name) or spec.space.get(base)
    if p is None or isinstance(p, Fixed):
        return False
    if isinstance(p, CategoricalParam):
        return value in p.choices
    return isinstance(value, int | float) and p.low <= value <= p.high


def apply(handle: Handle, p: Plan) -> dict[str, Any]:
    """Add or enqueue the planned trials and record the lineage in the new study."""
    study = handle.study
    if p.add:
        study.add_trials(p.add)
    for params in p.enqueue:
        study.enqueue_trial(params, user_attrs={FROM_ATTR: p.source}, skip_if_exists=True)
    lineage = {"from": p.source, "storage": p.storage, "added": len(p.add),
               "enqueued": len(p.enqueue), "differs": p.differs}
    study.set_user_attr(WARM_START_ATTR, lineage)
    return lineage
