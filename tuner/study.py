"""Create, resume and load studies. The spec lives in the study itself, so any worker can
join a study from the database alone."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner import schedules
from tuner.config import StudySpec, space, spec_from_json
from tuner.errors import SpecMismatch, StudyNotFound, TunerError
from tuner.storage import (
    Budget,
    BudgetState,
    Informed,
    decided,
    delete_controls,
    display_url,
    record,
    record_first,
)
from tuner.trial_schema import INFEASIBLE_ATTR, REPEAT_ATTR

SPEC_ATTR = "tuner.spec"
# where a warm-started study's first trials came from (:mod:`tuner.results.warmstart`)
WARM_START_ATTR = "tuner.warm_start"
# the first trial number that ``stop: {patience: N}`` counts (set when a study that stopped
# early is given more budget: the trials asked for are run)
PATIENCE_FROM_ATTR = "tuner.patience_from"
# the system attr where Optuna's grid sampler keeps the point a trial takes
GRID_ID = "grid_id"


def build_sampler(spec: StudySpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler. Every draw is seeded from the study seed and the trial's number
    (:class:`tuner.storage.Informed`), so a study reproduces from its seed while no two
    trials draw alike, in any worker, however often it is resumed (``worker_index`` is
    kept for callers; it no longer offsets anything)."""
    del worker_index
    seed = spec.seed
    s = spec.sampler
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    inner: optuna.samplers.BaseSampler
    if s.name == "tpe":
        # constant_liar: running trials count as bad guesses, so workers spread out
        inner = optuna.samplers.TPESampler(
            seed=seed, multivariate=s.multivariate, group=s.multivariate, constant_liar=True,
            **startup,
        )
    elif s.name == "random":
        inner = optuna.samplers.RandomSampler(seed=seed)
    elif s.name == "grid":
        inner = optuna.samplers.GridSampler(space.grid(spec), seed=seed)
    elif s.name == "cmaes":
        inner = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                             **startup)
    elif s.name == "gp":
        inner = optuna.samplers.GPSampler(seed=seed, **startup)
    elif s.name == "nsga2":
        inner = optuna.samplers.NSGAIISampler(
            seed=seed, **({} if s.n_startup_trials is None
                          else {"population_size": s.n_startup_trials}))
    else:
        inner = optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    primary = None
    if spec.multi_objective:  # the objective whose curve pruned trials carry
        primary = StudyDirection[
            spec.directions[spec.objective_names.index(spec.metric_name)].upper()]
    # Optuna's GP and NSGA-II read complete trials only: pruned and infeasible ones are shown
    return Informed(inner, seed=seed, primary=primary, pruned_as_worst=s.name in ("gp", "nsga2"))


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The schedule's pruner. Budget unit: epochs (steps reported are 1-based epochs, or
    folds with k-fold)."""
    return schedules.of(spec).pruner()


@dataclass
class Handle:
    """An open study with its spec and budget."""

    study: optuna.Study
    spec: StudySpec
    budget: Budget
    created: bool = False

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def schedule(self) -> schedules.Schedule:
        return schedules.of(self.spec)

    def _view(self, final: bool = False) -> schedules.View:
        return schedules.View(lambda: self.study.get_trials(deepcopy=False),
                              lambda: decided(self.study), self.budget.state, final)

    def promote(self, final: bool = False) -> bool:
        """Record what the schedule decides when a worker asks for work (an ASHA promotion, a
        PBT generation), if anything; ``final``: no new trial may start."""
        return record_first(self.study, self.schedule.decisions(self._view(final))) \
            is not None

    def pending(self) -> bool:
        """A decision is still to come though nothing runs or waits (PBT: a generation)."""
        return self.schedule.pending(self._view())

    def retire(self) -> list[int]:
        """Once nothing runs: retire what can never continue; the lineages whose checkpoints
        may go."""
        return [lin for d in self.schedule.retirements(self._view())
                if record(self.study, d) for lin in d.frees]


def _budget(storage: optuna.storages.RDBStorage, name: str) -> Budget:
    return Budget(storage.engine, name)


def create_or_resume(storage: optuna.storages.RDBStorage, spec: StudySpec, *,
                     force: bool = False, worker_index: int = 0) -> Handle:
    """Create the study from ``spec``, or open it if it exists. A stored spec that differs in
    what is searched is an error unless ``force`` (then the file's spec replaces it)."""
    study = optuna.create_study(
        study_name=spec.name, storage=storage, directions=spec.directions,
        sampler=build_sampler(spec, worker_index), pruner=build_pruner(spec), load_if_exists=True,
    )
    budget = _budget(storage, spec.name)
    stored_json = study.user_attrs.get(SPEC_ATTR)
    if stored_json is None:
        # new (or created by a worker a moment ago): whoever stores the spec first decides
        study.set_user_attr(SPEC_ATTR, spec.to_json())
        _name_metrics(study, spec)
        # atomic: 8 workers may get here at once
        # a grid search runs each point once: more trials than points would repeat some
        size = grid_size(spec)
        budget.initialize(spec.trials if size is None else min(spec.trials, size), spec.timeout,
                          spec.budget_hours)
        return Handle(study, spec, budget, created=True)
    stored = spec_from_json(stored_json)
    if study.metric_names is None:  # created before tuner named them
        _name_metrics(study, stored)
    if stored.search_fields() != spec.search_fields():
        if not force:
            changed = sorted(
                k for k in set(stored.search_fields()) | set(spec.search_fields())
                if stored.search_fields().get(k) != spec.search_fields().get(k)
            )
            raise SpecMismatch(
                f"study {spec.name!r} was created from a different study file (changed: "
                f"{', '.join(changed)}); use --study NEW_NAME for a new study, or --force to "
                "continue this one with the new file"
            )
        if stored.directions != spec.directions:
            raise SpecMismatch(
                f"study {spec.name!r} optimizes {_goal(stored)}; a study's objectives and "
                "directions cannot change, use --study NEW_NAME"
            )
        study.set_user_attr(SPEC_ATTR, spec.to_json())
        stored = spec
    return Handle(study, stored, budget)


def _name_metrics(study: optuna.Study, spec: StudySpec) -> None:
    with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna
        warnings.simplefilter("ignore")
        study.set_metric_names(spec.objective_names)  # the dashboard labels its axes with them


def _goal(spec: StudySpec) -> str:
    return ", ".join(f"{d} {m}" for m, d in zip(spec.objective_names, spec.directions, strict=True))


def load(storage: optuna.storages.RDBStorage, name: str, *, worker_index: int = 0,
         wait_s: float = 5.0) -> Handle:
    """Open an existing study by name, with the spec stored in it."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise StudyNotFound(
            f"no study named {name!r} in {display_url(storage.url)}; "
            "`tuner studies` lists them, or check --storage"
        ) from None
    deadline = time.monotonic() + wait_s
    while (spec_json := study.user_attrs.get(SPEC_ATTR)) is None:
        if time.monotonic() > deadline:  # the creator stores the spec right after creating
            raise StudyNotFound(
                f"study {name!r} has no tuner spec (it was not created by tuner); "
                "run it with `tuner run FILE --study NAME` first"
            )
        time.sleep(0.2)
        study = optuna.load_study(study_name=name, storage=storage)
    spec = spec_from_json(spec_json)
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=build_sampler(spec, worker_index), pruner=build_pruner(spec))
    return Handle(study, spec, _budget(storage, name))


def add_budget(handle: Handle, trials: int | None, timeout: float | None,
               hours: float | None = None) -> BudgetState:
    """``trials`` more trials and/or a deadline ``timeout`` s from now and/or ``hours`` more
    device-hours. A timeout or hours alone lift the trial limit (run until they are spent),
    except under PBT, whose trials are its population: there they keep it. Asking for more
    explicitly lets a study that stopped early (``stop:``) go on."""
    left = _grid_left(handle)
    if left is not None and (trials is not None or timeout is not None or hours is not None):
        if left == 0:
            raise TunerError(
                f"study {handle.name!r} has tried every point of its grid "
                f"({grid_size(handle.spec)}); nothing is left to run: search a wider or finer "
                "grid as a new study (--study NEW_NAME)")
        trials = left if trials is None else min(trials, left)  # no point twice
    if hours is not None:
        handle.budget.add_hours(hours)
    if trials is not None or timeout is not None or hours is not None:
        if handle.budget.state().stopped is not None:
            # patience counts again from the next trial, not over the whole history
            handle.study.set_user_attr(PATIENCE_FROM_ATTR,
                                       len(handle.study.get_trials(deepcopy=False)))
        handle.budget.unstop()
    if trials is None and handle.schedule.population:
        # a population of `population` members, not as many as fit in the time
        return handle.budget.set_deadline(timeout) if timeout is not None or hours is not None \
            else handle.budget.state()
    if trials is None and timeout is None:
        return handle.budget.add(None, None) if hours is not None else handle.budget.state()
    return handle.budget.add(trials, timeout)


def grid_size(spec: StudySpec) -> int | None:
    """How many points the grid sampler's grid has; None for the other samplers."""
    if spec.sampler.name != "grid":
        return None
    return math.prod(len(v) for v in space.grid(spec).values())


def grid_points(trials: list[FrozenTrial], *, finished: bool = False) -> set[int]:
    """The grid points (Optuna's grid ids) that ``trials`` took (``finished``: that ended)."""
    return {int(t.system_attrs[GRID_ID]) for t in trials if GRID_ID in t.system_attrs
            and (not finished or t.state.is_finished())}


def _grid_left(handle: Handle) -> int | None:
    """The grid points no trial has taken yet (None: not a grid search)."""
    size = grid_size(handle.spec)
    if size is None:
        return None
    return size - len(grid_points(handle.study.get_trials(deepcopy=False)))


def delete(storage: optuna.storages.RDBStorage, name: str) -> None:
    load(storage, name, wait_s=0)  # raises StudyNotFound with its helpful message
    optuna.delete_study(study_name=name, storage=storage)
    _budget(storage, name).delete()
    delete_controls(storage.engine, name)


# ---- what a study found -------------------------------------------------------------
def feasible(t: FrozenTrial) -> bool:
    """No constraint of the trial is violated (Optuna's convention: > 0 is a violation)."""
    return INFEASIBLE_ATTR not in t.user_attrs and all(v <= 0 for v in t.constraints.values())


def primary_value(spec: StudySpec, t: FrozenTrial) -> float | None:
    """The trial's value of the metric its training loop reports (the only one, or the
    pruned-on objective of a multi-objective study)."""
    if not t.values:
        return None
    return t.values[spec.objective_names.index(spec.metric_name)] if len(t.values) > 1 else t.values[0]


def pareto_front(handle: Handle) -> list[FrozenTrial]:
    """The feasible completed trials (repeats of a configuration left out) no other
    feasible trial dominates, by trial number. For a single-objective study, the best trial
    (ties included)."""
    done = [t for t in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and feasible(t) and REPEAT_ATTR not in t.user_attrs]
    return nondominated(done, handle.spec.directions)


def nondominated(trials: list[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """The ``trials`` (each with values) that no other of them dominates, in their order;
    ``directions``: "maximize" or "minimize" per objective."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    keyed = [(t, [s * v for s, v in zip(signs, t.values, strict=True)]) for t in trials]

    def dominated(a: list[float]) -> bool:
        return any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for _, b in keyed)

    return [t for t, k in keyed if not dominated(k)]
