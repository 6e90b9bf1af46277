"""The study file's ``sampler:`` block (``sampler: tpe`` or ``{name: nsga2,
n_startup_trials: 20}``) and its rules against the rest of the study."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from tuner.config._base import Frozen
from tuner.gate import MAX_COUNT

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec


class SamplerSpec(Frozen):
    name: Literal["tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2"] = "tpe"  # the samplers
    # startup trials sampled at random before the model-based samplers take over (nsga2:
    # its population, each generation's size)
    n_startup_trials: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    multivariate: bool = True


def _shorthand(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


# ``sampler: NAME`` is ``sampler: {name: NAME}``
Sampler = Annotated[SamplerSpec, BeforeValidator(_shorthand)]


def check(spec: StudySpec) -> None:
    """The sampler suits the study: nsga2 has a population, cmaes one objective. (A grid
    study's grid is the space's check.)"""
    sampler = spec.sampler
    if sampler.name == "nsga2" and (sampler.n_startup_trials or 2) < 2:
        raise ValueError("sampler: nsga2's n_startup_trials is its population size, at least 2")
    if sampler.name == "cmaes" and spec.multi_objective:
        raise ValueError("sampler: cmaes optimizes one objective; use tpe, nsga2, gp, random "
                         "or qmc with several objectives")
