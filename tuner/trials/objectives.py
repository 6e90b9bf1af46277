"""A trial's values: every objective's value of a multi-objective study, the secondary
metrics tuner measures itself (``params``, ``size_mb``, ``latency_ms``, ``epoch_s``), and
the constraints on them told to the sampler (Optuna's ``set_constraint``: <= 0 is
feasible), before training when they can be known then."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from tuner import vocab
from tuner.config import StudySpec
from tuner.training import measure
from tuner.training.assets import StudyAssets
from tuner.training.context import Context
from tuner.trials.outcome import Infeasible


def wanted(spec: StudySpec) -> set[str]:
    """The secondary metrics the study's objectives and constraints name."""
    return {*spec.objective_names, *spec.constraints} & set(vocab.SECONDARY_METRICS)


def primary(spec: StudySpec) -> tuple[int, str] | None:
    """(index, direction) of the pruned-on objective of a multi-objective study."""
    if not spec.multi_objective:
        return None
    index = spec.objective_names.index(spec.metric_name)
    return index, spec.directions[index]


def _model(assets: StudyAssets, params: Mapping[str, Any]) -> Any:
    if not assets.has_data:
        return None
    return assets.model_builder(assets.data())(params)


def before_training(assets: StudyAssets, trial: optuna.Trial,
                    params: Mapping[str, Any]) -> dict[str, float]:
    """params and size_mb when the study needs them; raises :class:`Infeasible` when a
    constraint on them fails (no epoch is spent)."""
    if not wanted(assets.spec) & set(vocab.BEFORE_TRAINING):
        return {}
    model = _model(assets, params)
    measured = measure.size(model) if model is not None else {}
    constrain(assets.spec, trial, measured, before=True)
    return measured


def constrain(spec: StudySpec, trial: optuna.Trial, measured: Mapping[str, float], *,
              before: bool = False) -> None:
    """Tell the sampler how far each measured metric is from its bounds (Optuna's
    constraints: <= 0 is feasible)."""
    broken = []
    for name, bound in spec.constraints.items():
        if name not in measured or (not before and name in vocab.BEFORE_TRAINING):
            continue  # not measured, or set before training already
        violation = bound.violation(measured[name])
        trial.set_constraint(name, violation)
        if violation > 0:
            broken.append(f"{name} {measured[name]:.4g} outside "
                          f"[{bound.min if bound.min is not None else '-inf'}, "
                          f"{bound.max if bound.max is not None else 'inf'}]")
    if broken and before:
        raise Infeasible("infeasible before training: " + "; ".join(broken))


def values(assets: StudyAssets, raw: Any, params: Mapping[str, Any], ctxs: list[Context],
           measured: dict[str, float], fit_s: float) -> tuple[float, ...]:
    """Every objective's value: a trainer's tuple gives them in order; otherwise the
    returned value is the reported metric's, built-in secondary metrics are measured
    here, and the rest come from the last ``ctx.report`` extras or ``ctx.info``."""
    spec = assets.spec
    names = spec.objective_names
    if isinstance(raw, tuple | list):
        if len(raw) != len(names):
            raise ValueError(f"the trainer returned {len(raw)} values for the "
                             f"{len(names)} objectives {', '.join(names)}")
        out = dict(zip(names, map(float, raw), strict=True))
    else:
        out = {spec.metric_name: float(raw)}
    last = ctxs[-1].history[-1] if ctxs and ctxs[-1].history else {}
    info: dict[str, Any] = {k: v for c in ctxs for k, v in c.info.items()}
    secondary = wanted(spec)
    if "latency_ms" in secondary and "latency_ms" not in out and assets.has_data:
        bundle = assets.data()
        split = bundle.val if bundle.val is not None else bundle.train
        # one batch as the model sees it: normalised, on the device
        batch, _ = next(bundle.batches(split, int(params.get("batch_size", 128)),
                                       shuffle=False))
        measured["latency_ms"] = measure.latency_ms(_model(assets, params), batch)
    if "epoch_s" in secondary:
        epochs = max(1, len([h for c in ctxs for h in c.history]))
        measured["epoch_s"] = fit_s / epochs
    for name in [*names, *spec.constraints]:
        if name in out or name in measured:
            continue
        for source in (last.get(name), last.get(f"val_{name}"), info.get(name)):
            if isinstance(source, int | float):
                measured[name] = float(source)
                break
    for name in names:
        if name not in out:
            if name not in measured:
                raise ValueError(f"objective {name} has no value; return a tuple of every "
                                 f"objective or ctx.report(epoch, value, {name}=...)")
            out[name] = measured[name]
    measured.update(out)
    return tuple(out[n] for n in names)
