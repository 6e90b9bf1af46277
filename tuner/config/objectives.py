"""What a study optimizes: ``metric:`` and ``direction:``, or ``objectives:`` (a Pareto
front) with ``prune_on:``, and ``constraints:`` (bounds on metrics); their checks against
the task and the metrics tuner's loop reports, and the names and directions derived from
them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from tuner import vocab
from tuner.config._base import Frozen
from tuner.errors import SpecError
from tuner.gate import Finite
from tuner.registry import did_you_mean

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec


class Objective(Frozen):
    """One objective of a multi-objective study: a metric and its direction (the metric's
    own direction when not given)."""

    metric: str = Field(min_length=1)
    direction: Literal["maximize", "minimize"] | None = None


class Bound(Frozen):
    """Feasible values of one metric: ``{max: 1.0e6}``, ``{min: 0.9}`` or both."""

    min: Finite | None = None
    max: Finite | None = None

    @model_validator(mode="after")
    def _check(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs min:, max: or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); swap them")
        return self

    def violation(self, value: float) -> float:
        """Optuna's constraint value: <= 0 when ``value`` is feasible, else how far out."""
        over = value - self.max if self.max is not None else -math.inf
        under = self.min - value if self.min is not None else -math.inf
        return float(max(over, under))


def _shorthand(v: Any) -> Any:
    if v is None:
        return v
    if not isinstance(v, list):
        raise ValueError("objectives: give a list, e.g. [accuracy, params]")
    return [{"metric": o} if isinstance(o, str) else o for o in v]


# ``[accuracy, params]`` or ``[{metric: accuracy}, {metric: latency_ms, direction: minimize}]``
Objectives = Annotated[list[Objective] | None, BeforeValidator(_shorthand)]


def direction_of(metric: str) -> str | None:
    """A built-in metric's direction (secondary metrics are minimized); None: unknown."""
    if metric in vocab.METRICS:
        return vocab.METRICS[metric][1]
    return "minimize" if metric in vocab.SECONDARY_METRICS else None


def check_metric(spec: StudySpec) -> None:
    """``metric:`` is a known metric of the study's task, and the task is known."""
    if spec.metric is not None and spec.metric not in vocab.METRICS:
        raise ValueError(
            f"metric: unknown metric {spec.metric!r}{did_you_mean(spec.metric, vocab.METRICS)}; "
            f"use one of {', '.join(vocab.METRICS)}"
        )
    if spec.task_name is None and spec.data is None:
        raise ValueError("task: a study whose trainer brings its own data must say task: "
                         "classification or regression (or a metric that implies it)")
    metric_task = vocab.METRICS[spec.metric][0] if spec.metric else None
    if metric_task is not None and spec.task_name is not None and metric_task != spec.task_name:
        raise ValueError(f"metric: {spec.metric} is not a {spec.task_name} metric")


def check(spec: StudySpec) -> None:
    """The objectives name known metrics once, with their own directions, at least one with a
    learning curve; ``prune_on:`` is one of them; each constraint bounds a produced metric."""
    known = [*vocab.METRICS, *vocab.SECONDARY_METRICS]
    names = [o.metric for o in spec.objectives or []]
    if spec.objectives is not None and spec.metric is not None:
        raise ValueError("give metric: or objectives:, not both (the first objective is "
                         "the metric)")
    if len(set(names)) != len(names):
        raise ValueError("objectives: a metric is listed twice; list each once")
    for o in spec.objectives or []:
        builtin = direction_of(o.metric)
        if builtin is None and spec.trainer is None:
            raise ValueError(f"objectives: unknown metric {o.metric!r}"
                             f"{did_you_mean(o.metric, known)}; use one of {', '.join(known)}")
        if builtin is None and o.direction is None:
            raise ValueError(f"objectives: {o.metric} is the trainer's own metric; give it "
                             "a direction: {metric: NAME, direction: maximize}")
        if builtin is not None and o.direction is not None and o.direction != builtin:
            raise ValueError(f"objectives: {o.metric} is a metric to {builtin}, not to "
                             f"{o.direction}; drop its direction:")
        task = vocab.METRICS.get(o.metric, (None,))[0]
        if task is not None and spec.task_name is not None and task != spec.task_name:
            raise ValueError(f"objectives: {o.metric} is not a {spec.task_name} metric")
    if not any(n not in vocab.SECONDARY_METRICS for n in names) and names:
        raise ValueError("objectives: name at least one metric the training loop reports "
                         f"each epoch (e.g. {', '.join(vocab.METRICS)})")
    if spec.prune_on is None and not spec.constraints:
        return  # (what follows needs the objectives' names, which may wait for the data)
    if spec.prune_on is not None and spec.prune_on not in spec.objective_names:
        raise ValueError(f"prune_on: {spec.prune_on!r} is not one of the objectives "
                         f"({', '.join(spec.objective_names)})")
    if spec.prune_on in vocab.SECONDARY_METRICS:
        raise ValueError(f"prune_on: {spec.prune_on} has no learning curve; name a metric "
                         "the training loop reports each epoch")
    produced = [*spec.objective_names, *vocab.SECONDARY_METRICS]
    for m in spec.constraints:
        if m not in produced:
            raise ValueError(f"constraints: the study does not produce {m!r}"
                             f"{did_you_mean(m, produced)}; constrain one of "
                             f"{', '.join(produced)}")


def metric_name(spec: StudySpec) -> str:
    """The metric the training loop reports each epoch: ``metric:``, or ``prune_on:`` /
    the first objective that has a learning curve."""
    if spec.metric is not None:
        return spec.metric
    if spec.objectives is not None:
        return spec.prune_on or next(o.metric for o in spec.objectives
                                     if o.metric not in vocab.SECONDARY_METRICS)
    if spec.task_name is None:
        raise SpecError(f"study {spec.name!r}: the task is not known before its data is "
                        "loaded; say task: or metric: in the study file")
    return vocab.DEFAULT_METRIC[spec.task_name]


def directions(spec: StudySpec) -> list[str]:
    """Each objective's direction: given, the built-in metric's, else maximize."""
    if spec.objectives is None:
        return [spec.direction_name]
    return [o.direction or direction_of(o.metric) or "maximize" for o in spec.objectives]
