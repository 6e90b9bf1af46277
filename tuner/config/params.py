"""The study file's ``space:`` block: the parameter types (float, int, categorical ranges
and fixed values), their ``when:`` / ``per_layer:`` references, the checks of every value
against the knobs tuner's code declares, and the grid for ``sampler: grid``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from tuner import models
from tuner.config._base import Frozen, Scalar, as_list
from tuner.errors import SpecError
from tuner.gate import Finite
from tuner.registry import Knob

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec

# the keys a parameter may have (an unknown one is named against these)
PARAM_KEYS = ["type", "low", "high", "log", "step", "choices", "when", "per_layer", "value"]
GRID_LIMIT = 10_000


class _Param(Frozen):
    # only sample this parameter when another one has one of these values, e.g.
    # ``when: {optimizer: [sgd, sgd_momentum]}``
    when: dict[str, Annotated[list[Scalar], BeforeValidator(as_list)]] | None = None
    # sample one value per layer, named ``NAME_0 .. NAME_{n-1}``, n being the value of
    # the (int) parameter named here, e.g. ``per_layer: depth``
    per_layer: str | None = None


class FloatParam(_Param):
    type: Literal["float"]
    low: Finite
    high: Finite
    log: bool = False
    step: Finite | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[Scalar]) -> list[Scalar]:
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError("choices repeat a value; list each choice once")
        return choices


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("low and high must be finite numbers")
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high}); swap them")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0 (got {low}); raise low or drop log: true")
    if log and step is not None:
        raise ValueError("step cannot be combined with log: true; drop one of them")
    if step is not None and step <= 0:
        raise ValueError(f"step must be positive (got {step})")
    if step is not None and high > low and step > high - low:
        raise ValueError(f"step ({step}) is larger than the range {low}..{high}; use a step "
                         "that fits the range, or a fixed value")


class Fixed(Frozen):
    """A constant: a plain value in the study file (``optimizer: adamw``)."""

    value: Scalar


def _entry_kind(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("type") if "type" in v else ("fixed" if set(v) == {"value"} else None)
    return getattr(v, "type", "fixed")


def _shorthands(v: Any) -> Any:
    if not isinstance(v, dict):
        raise ValueError("space must be a mapping of parameter names to ranges or values")
    # a plain value is a constant; a plain list is a categorical choice
    return {
        k: p if isinstance(p, dict | BaseModel)
        else {"type": "categorical", "choices": p} if isinstance(p, list)
        else {"value": p}
        for k, p in v.items()
    }


Param = FloatParam | IntParam | CategoricalParam
SpaceEntry = Annotated[
    Annotated[FloatParam, Tag("float")]
    | Annotated[IntParam, Tag("int")]
    | Annotated[CategoricalParam, Tag("categorical")]
    | Annotated[Fixed, Tag("fixed")],
    Discriminator(_entry_kind),
]
# the ``space:`` block: parameter name -> its range or value, in the file's order
Space = Annotated[dict[str, SpaceEntry], BeforeValidator(_shorthands)]


def check(spec: StudySpec) -> None:
    """References point upwards, every value suits its knob, the model family's rules
    between knobs hold, and a grid study's space has a grid."""
    names = list(spec.space)
    knobs = spec.knobs()
    for i, (name, p) in enumerate(spec.space.items()):
        if isinstance(p, Fixed):
            if (knob := knobs.get(name)) is not None:
                _check_knob(name, p, knob)
            continue
        for ref in [*(p.when or {}), *([p.per_layer] if p.per_layer else [])]:
            if ref not in names[:i]:
                raise ValueError(
                    f"space.{name}: refers to {ref!r}, which must be defined above it in space"
                )
        if p.per_layer:
            ref = spec.space[p.per_layer]
            if not isinstance(ref, IntParam) and not (
                isinstance(ref, Fixed) and isinstance(ref.value, int)
            ):
                raise ValueError(f"space.{name}: per_layer must name an int parameter")
        if (knob := knobs.get(name)) is not None:
            _check_knob(name, p, knob)
    family = models.get(fam) if (fam := models.family_of(spec.model)) else None
    if family is not None and family.check_space is not None and spec.trainer is None:
        drawn = {k: _drawable(p) for k, p in spec.space.items() if k in family.knobs}
        if (why := family.check_space(drawn)) is not None:
            raise ValueError(why)
    if spec.sampler.name == "grid":
        grid(spec)


def example(p: Any) -> Any:
    """A value to show for ``p`` in a message (its first choice, its low end)."""
    if isinstance(p, CategoricalParam):
        return p.choices[0]
    return getattr(p, "low", "VALUE")


def _grid_values(name: str, p: Param) -> list[Any]:
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if isinstance(p, FloatParam) and p.step is None:
        raise SpecError(
            f"space.{name}: the grid sampler needs a step for float ranges; add step: or use choices"
        )
    step = p.step or 1
    count = int(round((p.high - p.low) / step)) + 1
    if count > GRID_LIMIT:
        raise SpecError(f"space.{name}: {count} grid points; use a larger step or another sampler")
    return [type(p.low)(p.low + i * step) for i in range(count)]


def grid(spec: StudySpec) -> dict[str, list[Any]]:
    """The grid for Optuna's GridSampler: every searched name (per-layer names up to the most
    layers) mapped to its values."""
    out: dict[str, list[Any]] = {}
    highest: dict[str, int] = {}
    for name, p in spec.space.items():
        if isinstance(p, Fixed):
            if isinstance(p.value, int):
                highest[name] = p.value
            continue
        values = _grid_values(name, p)
        if isinstance(p, IntParam):
            highest[name] = int(max(values))
        names = [name] if p.per_layer is None else [
            f"{name}_{i}" for i in range(highest[p.per_layer])
        ]
        for n in names:
            out[n] = values
    size = 1
    for v in out.values():
        size *= len(v)
    if size > 1_000_000:
        raise SpecError(f"the grid has {size:,} points; narrow the space or use sampler: tpe")
    return out


def _drawable(p: Any, most: int = 1000) -> list[Any] | None:
    """Every value ``p`` can draw, or None for a float range or an int range of more than
    ``most`` values."""
    if isinstance(p, Fixed):
        return [p.value]
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if isinstance(p, IntParam) and not p.log and (p.high - p.low) // p.step < most:
        return list(range(p.low, p.high + 1, p.step))
    if isinstance(p, IntParam) and p.log and p.high - p.low < most:
        return list(range(p.low, p.high + 1))
    return None


def _check_knob(name: str, p: Any, knob: Knob) -> None:
    """Every value the space can give ``name`` must suit tuner's code: each choice, or both
    ends of a range (its values lie between them)."""
    if isinstance(p, Fixed):
        values = [p.value]
    elif isinstance(p, CategoricalParam):
        values = list(p.choices)
    else:
        values = [p.low, p.high]
    for v in values:
        if (why := knob.problem(name, v)) is not None:
            raise ValueError(f"space.{name}: {why}")
