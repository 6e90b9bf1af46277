"""Warm start: a new study begins from an earlier one (``tuner run new.yaml --from OLD``).

When both studies train the same data and model for the same epochs towards the same
objectives, the old study's completed trials whose params fit the new space become completed
trials of the new one (``Study.add_trials``): the sampler learns from them and no budget is
spent. Otherwise ``--enqueue-top K`` enqueues the old study's K best configurations (their
params that fit the new space) as the new study's first trials. Either way the new study
records where its trials came from (:data:`tuner.study.WARM_START_ATTR`), which
``tuner status`` shows.

Everything is planned (:func:`plan`) before the new study is written, so a misfit is one
error and an untouched storage. The old study's storage is opened read-only
(:func:`source`), and a warm start never writes into a study that exists already
(:func:`refuse_existing`): not into another study's trials, and not into the old study
itself, however its storage's URL is spelled.

With ``constraints:``, each carried trial is judged against the new study's bounds from
what it measured: an infeasible one comes over infeasible (the sampler learns from it,
``best`` and ``retrain`` never pick it), and one that did not measure a constrained metric
does not come over (its feasibility is unknown).
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

from tuner.config import CategoricalParam, Fixed, StudySpec, space
from tuner.errors import SpecError, StorageError, StudyNotFound
from tuner.storage import connect, display_url, engine_of, same_database, study_exists
from tuner.study import WARM_START_ATTR, Handle, feasible, load, primary_value
from tuner.trial_schema import EPOCHS_ATTR, INFEASIBLE_ATTR, METRICS_ATTR, WARM_START_FROM_ATTR

__all__ = ["Plan", "apply", "plan", "refuse_existing", "source"]

# what must match for an old trial's result to stand for a trial of the new study
_SAME = ("data", "data_as", "model", "trainer", "task", "validation", "epochs", "amp")


class _Misfit(Exception):
    pass


class _Fit:
    """Stands in for a trial in :func:`tuner.config.space.suggest`: answers each suggestion with
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


def source(name: str, url: str) -> Handle:
    """The ``--from`` study ``name`` in the storage at ``url``, opened read-only: nothing is
    created or changed there. Errors name ``--from``."""
    try:
        return load(connect(url, access="read"), name, wait_s=0)
    except (StorageError, StudyNotFound) as e:
        raise type(e)(f"--from {name}: {e}") from e


def refuse_existing(storage: optuna.storages.RDBStorage, name: str, old: Handle) -> None:
    """A warm start creates a study: refuse (nothing written) when study ``name`` exists in
    ``storage`` already, whether it is another study or the ``--from`` study itself."""
    if not study_exists(storage, name):
        return
    shown = display_url(storage.url)
    old_url = engine_of(old.study).url.render_as_string(hide_password=False)
    if name == old.name and same_database(storage.url, old_url):
        raise SpecError(f"--from {old.name}: that is the study itself (in {shown}); give the "
                        "new study another name (--study NEW_NAME)")
    raise SpecError(f"study {name!r} already exists in {shown}, and --from only starts a new "
                    f"study; resume it without --from (`tuner resume {name}`), or give the "
                    "new study another name (--study NEW_NAME)")


def _judged(new: StudySpec, t: FrozenTrial, objectives: list[str]) -> dict[str, float] | None:
    """The new study's constraint values of the old trial ``t`` (<= 0: feasible), from what
    it measured and its ``objectives``' values; None when it did not measure a constrained
    metric (its feasibility under the new bounds is unknown)."""
    measured = {**(t.user_attrs.get(METRICS_ATTR) or {}),
                **dict(zip(objectives, t.values or (), strict=False))}
    if any(m not in measured for m in new.constraints):
        return None
    return {m: b.violation(float(measured[m])) for m, b in new.constraints.items()}


def plan(old: Handle, new: StudySpec, *, storage: str, enqueue_top: int | None) -> Plan:
    """What the new study takes from ``old``. Raises :class:`SpecError` (nothing written yet)
    when nothing can be taken."""
    complete = [t for t in old.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values]
    done = [t for t in complete if feasible(t)]
    differs = compatible(old.spec, new)
    if not differs:
        add = []
        for t in complete:
            judged = _judged(new, t, old.spec.objective_names)
            if new.constraints and judged is None:
                continue  # a constrained metric it never measured: feasibility unknown
            if (dists := _fit(new, t.params)) is None:
                continue
            keep = (METRICS_ATTR, EPOCHS_ATTR, INFEASIBLE_ATTR)
            carried = optuna.trial.create_trial(
                params={k: t.params[k] for k in dists}, distributions=dists,
                values=list(t.values), intermediate_values=dict(t.intermediate_values),
                user_attrs={**{k: v for k, v in t.user_attrs.items() if k in keep},
                            WARM_START_FROM_ATTR: f"{old.name}#{t.number}"},
            )
            # infeasible stays infeasible: the old verdict (rejected before training, out of
            # memory) and the new study's bounds on what it measured
            for m, v in (judged or {}).items():
                carried.set_constraint(m, v)
            if not new.constraints and not feasible(t):
                for m, v in t.constraints.items():
                    carried.set_constraint(m, v)
            add.append(carried)
        if any(feasible(t) for t in add) or enqueue_top is None:
            if not add:
                raise SpecError(f"--from {old.name}: none of its {len(complete)} completed "
                                "trials fits the new space"
                                + (" or measured its constrained metrics" if new.constraints
                                   else "")
                                + "; widen the space, or pass --enqueue-top K")
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
        study.enqueue_trial(params, user_attrs={WARM_START_FROM_ATTR: p.source}, skip_if_exists=True)
    lineage = {"from": p.source, "storage": p.storage, "added": len(p.add),
               "enqueued": len(p.enqueue), "differs": p.differs}
    study.set_user_attr(WARM_START_ATTR, lineage)
    return lineage
