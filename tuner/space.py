"""The search space as data: a spec's ``space`` -> Optuna distributions and sampled params.

``suggest(trial, spec)`` is the one place a trial's parameters are drawn; it honours
conditions (``when``) and per-layer parameters (``per_layer``), and adds the constants.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.errors import SpecError
from tuner.spec import CategoricalParam, Fixed, FloatParam, IntParam, Param, StudySpec

GRID_LIMIT = 10_000


def distribution(p: Param) -> BaseDistribution:
    if isinstance(p, FloatParam):
        return FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, IntParam):
        return IntDistribution(p.low, p.high, log=p.log, step=p.step)
    return CategoricalDistribution(p.choices)


def _suggest_one(trial: optuna.Trial, name: str, p: Param) -> Any:
    if isinstance(p, FloatParam):
        return trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, IntParam):
        return trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
    return trial.suggest_categorical(name, p.choices)


def _active(p: Param, params: dict[str, Any]) -> bool:
    return all(params.get(ref) in allowed for ref, allowed in (p.when or {}).items())


def _names(name: str, p: Param, params: dict[str, Any]) -> list[str]:
    if p.per_layer is None:
        return [name]
    return [f"{name}_{i}" for i in range(int(params[p.per_layer]))]


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Draw one configuration. Constants are included; inactive conditionals are left out."""
    params: dict[str, Any] = {}
    for name, p in spec.space.items():
        if isinstance(p, Fixed):
            params[name] = p.value
        elif _active(p, params):
            for n in _names(name, p, params):
                params[n] = _suggest_one(trial, n, p)
    return params


def defaults(spec: StudySpec) -> dict[str, Any]:
    """A valid configuration without a trial (the low end of each range, the first choice),
    used to check user models before any trial starts."""
    params: dict[str, Any] = {}
    for name, p in spec.space.items():
        if isinstance(p, Fixed):
            params[name] = p.value
        elif _active(p, params):
            value = p.choices[0] if isinstance(p, CategoricalParam) else p.low
            for n in _names(name, p, params):
                params[n] = value
    return params


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


def describe(spec: StudySpec) -> list[tuple[str, str, str, str]]:
    """Rows of (name, kind, range, condition) for ``tuner check``."""
    rows = []
    for name, p in spec.space.items():
        if isinstance(p, Fixed):
            rows.append((name, "fixed", repr(p.value), ""))
            continue
        if isinstance(p, CategoricalParam):
            kind, rng = "categorical", ", ".join(map(str, p.choices))
        else:
            kind = p.type + (" log" if p.log else "")
            rng = f"[{p.low:g}, {p.high:g}]" + (f" step {p.step:g}" if p.step not in (None, 1) else "")
        cond = " and ".join(f"{k} in {v}" for k, v in (p.when or {}).items())
        if p.per_layer:
            name = f"{name}_0..{name}_{{{p.per_layer}-1}}"
        rows.append((name, kind, rng, cond))
    return rows
