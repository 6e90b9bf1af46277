"""The study's sampler as tuner drives it: each trial's randomness drawn from the study seed
and the trial's number, and the study shown to the sampler the way tuner records it.

- **Randomness.** Before each draw the wrapped sampler's random states (its own and its
  inner samplers') are seeded from ``(seed, trial number, what is drawn)``. The same study
  seed gives the same sequence, and no two trials of a study draw alike, whichever process
  draws them: a second worker, a resumed run or a worker started with the same index (a
  seed per process, ``seed + worker index``, drew the same start-up configurations again).
- **Several objectives and a pruned curve.** tuner records the pruned-on objective's curve
  on a multi-objective study's trials (:mod:`tuner.storage._primary`); TPE ranks pruned
  trials by their last report in ``study.direction``, which such a study has not. The
  sampler sees that objective's direction there.
- **Samplers that read only complete trials** (``pruned_as_worst``: Optuna's GP sampler).
  A pruned or infeasible trial ends PRUNED with no values, so the GP never saw it and
  proposed the same rejected point again and again. Here it sees each such trial as a
  complete one no better than the worst complete trial, with its constraints, so it learns
  the region is bad (or infeasible) and moves on. ASHA/PBT segments that paused are not
  results and stay out.
- **Optuna's grid sampler** calls ``study.stop()`` once the grid is covered, which raises
  outside ``study.optimize``; tuner's own stop rule ends a covered grid
  (:func:`tuner.runtime.stopping.why_stop`), so the call is a no-op here.

The stored trials are never changed: only the sampler's view of them.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Container, Iterator, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.study import StudyDirection
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.trial import FrozenTrial, TrialState

from tuner.schedules import PAUSED_ATTR


def trial_seed(seed: int, number: int, what: str) -> int:
    """The seed of one draw: a function of the study seed, the trial number and what is
    drawn (a parameter's name, or the joint draw), the same in every process."""
    key = (seed % 2**64, number % 2**64, zlib.crc32(what.encode()))
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _random_states(sampler: Any, seen: set[int] | None = None) -> Iterator[LazyRandomState]:
    """Every random state of ``sampler`` and of the samplers inside it (TPE's and GP's
    independent random sampler, say)."""
    seen = set() if seen is None else seen
    if id(sampler) in seen:
        return
    seen.add(id(sampler))
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            yield value
        elif isinstance(value, optuna.samplers.BaseSampler):
            yield from _random_states(value, seen)


class _View(optuna.Study):
    """A study as the sampler sees it: the same study (its dict, no ``Study.__init__``, no
    query), with the direction of the pruned-on objective, pruned trials shown as complete
    (``pruned_as_worst``) and a ``stop`` that does nothing."""

    _tuner_primary: StudyDirection | None
    _tuner_pruned_as_worst: bool

    @property
    def direction(self) -> StudyDirection:
        if self._tuner_primary is not None:
            return self._tuner_primary
        return super().direction

    def stop(self) -> None:
        """Optuna's grid sampler asks to stop once its grid is covered: tuner's own stop rule
        does that (a study is not stopped from inside a sampler here)."""

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = super()._get_trials(False, None, use_cache)
        if self._tuner_pruned_as_worst:
            trials = _pruned_as_worst(trials, self.directions)
        out = [t for t in trials if states is None or t.state in states]
        return copy.deepcopy(out) if deepcopy else out


def _view(study: optuna.Study, primary: StudyDirection | None,
          pruned_as_worst: bool) -> optuna.Study:
    # Hyperband hands samplers a bracket's study, which refuses most attributes; samplers
    # read trials through ``_get_trials``, which the bracket does not filter: its study
    try:
        study = object.__getattribute__(study, "_study")
    except AttributeError:
        pass
    view = _View.__new__(_View)
    view.__dict__.update(object.__getattribute__(study, "__dict__"))
    view._tuner_primary, view._tuner_pruned_as_worst = primary, pruned_as_worst
    return view


def _pruned_as_worst(trials: list[FrozenTrial],
                     directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """``trials`` with each finished PRUNED trial (pruned, or rejected by a constraint)
    shown COMPLETE with, per objective, the worst value of the complete trials; every shown
    trial carries every constraint name (a missing one at 0, the boundary), as Optuna's GP
    needs. Unchanged while no trial is complete."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not done:
        return trials
    worst = [max(t.values[i] for t in done) if d == StudyDirection.MINIMIZE
             else min(t.values[i] for t in done) for i, d in enumerate(directions)]
    shown = [t for t in trials
             if t.state == TrialState.COMPLETE
             or (t.state == TrialState.PRUNED and PAUSED_ATTR not in t.user_attrs and t.params)]
    names = sorted({n for t in shown for n in t.constraints})
    ids = {id(t) for t in shown}
    out = []
    for t in trials:
        if id(t) not in ids:
            out.append(t)
            continue
        missing = [n for n in names if n not in t.constraints]
        if t.state == TrialState.COMPLETE and not missing:
            out.append(t)
            continue
        v = copy.copy(t)
        v.system_attrs = {**t.system_attrs,
                          **{f"{_CONSTRAINTS_KEY}:{n}": 0.0 for n in missing}}
        if t.state != TrialState.COMPLETE:
            v.state, v.values = TrialState.COMPLETE, list(worst)
        out.append(v)
    return out


class Informed(optuna.samplers.BaseSampler):
    """``inner``, its randomness per trial (``seed``), seeing the study as tuner records it
    (``primary``: the pruned-on objective's direction of a multi-objective study;
    ``pruned_as_worst``: for a sampler that reads only complete trials)."""

    def __init__(self, inner: optuna.samplers.BaseSampler, *, seed: int,
                 primary: StudyDirection | None = None, pruned_as_worst: bool = False):
        self.inner, self.seed = inner, seed
        self._primary, self._pruned_as_worst = primary, pruned_as_worst

    def __str__(self) -> str:
        return type(self.inner).__name__

    def _for(self, study: optuna.Study, trial: FrozenTrial, what: str) -> optuna.Study:
        """Seed the inner sampler for this draw, and the study as it should see it."""
        for state in _random_states(self.inner):
            state.rng.seed(trial_seed(self.seed, trial.number, what))
        return _view(study, self._primary, self._pruned_as_worst)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(
            self._for(study, trial, "space"), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(self._for(study, trial, "relative"), trial,
                                          search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(self._for(study, trial, f"param:{param_name}"),
                                             trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(self._for(study, trial, "before"), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(self._for(study, trial, "after"), trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to do: every draw is seeded from the study seed and the trial number."""
