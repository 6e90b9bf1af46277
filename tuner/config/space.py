"""The search space as data: a spec's ``space`` -> sampled params, defaults and the grid.

``suggest(trial, spec)`` is the one place a trial's parameters are drawn; it honours
conditions (``when``) and per-layer parameters (``per_layer``), and adds the constants.
It asks the trial through its ``suggest_*`` methods alone, so it imports no Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.config import CategoricalParam, Fixed, FloatParam, IntParam, Param, StudySpec, grid

if TYPE_CHECKING:
    import optuna

__all__ = ["defaults", "describe", "grid", "suggest"]


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
