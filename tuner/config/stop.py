"""The study file's ``stop:`` block: when the study ends before its budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field

from tuner.config._base import Frozen
from tuner.gate import MAX_COUNT

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec


class StopSpec(Frozen):
    """When the study ends before its budget: ``patience`` finished trials in a row that did
    not improve the best value, or Optuna's Terminator (the regret bound falls below the
    statistical error of the best trial). Study-wide: every worker obeys."""

    patience: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    terminator: bool = False


def _mapping(v: Any) -> Any:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("give a mapping, e.g. stop: {patience: 20} or stop: {terminator: true}")
    return v


# ``stop:`` left empty is no rule
Stop = Annotated[StopSpec, BeforeValidator(_mapping)]


def check(spec: StudySpec) -> None:
    if spec.stop.terminator and spec.multi_objective:
        raise ValueError("stop.terminator: Optuna's Terminator judges one objective; use "
                         "stop: {patience: N} in a multi-objective study")
