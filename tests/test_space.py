"""The search space as data: distributions, conditions, per-layer params, grids."""

from __future__ import annotations

import optuna
import pytest

from tuner.config import parse_spec, space
from tuner.errors import SpecError

SPEC = parse_spec({
    "space": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "depth": {"type": "int", "low": 1, "high": 3},
        "width": {"type": "int", "low": 8, "high": 64, "log": True, "per_layer": "depth"},
        "optimizer": ["sgd", "adam"],
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
        "schedule": "cosine",
    }
})


def test_suggest_honours_conditions_per_layer_and_constants() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_momentum = {True: 0, False: 0}
    for _ in range(30):
        trial = study.ask()
        params = space.suggest(trial, SPEC)
        assert params["schedule"] == "cosine"
        assert 1e-4 <= params["lr"] <= 1e-1
        widths = [k for k in params if k.startswith("width_")]
        assert len(widths) == params["depth"]
        assert all(8 <= params[k] <= 64 for k in widths)
        has = "momentum" in params
        assert has == (params["optimizer"] == "sgd")
        seen_momentum[has] += 1
        # constants are not Optuna params; sampled ones are
        assert "schedule" not in trial.params and "lr" in trial.params
        study.tell(trial, 0.0)
    assert all(seen_momentum.values())


def test_defaults_are_a_valid_configuration() -> None:
    params = space.defaults(SPEC)
    assert params == {"lr": 1e-4, "depth": 1, "width_0": 8, "optimizer": "sgd", "momentum": 0.5,
                      "schedule": "cosine"}


def test_grid_enumerates_every_point() -> None:
    spec = parse_spec({
        "sampler": "grid",
        "space": {"lr": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},
                  "depth": {"type": "int", "low": 1, "high": 2},
                  "activation": ["relu", "tanh"]},
    })
    g = space.grid(spec)
    assert g["depth"] == [1, 2] and g["activation"] == ["relu", "tanh"]
    assert g["lr"] == pytest.approx([0.1, 0.2, 0.3])


def test_grid_of_a_continuous_float_is_an_error() -> None:
    with pytest.raises(SpecError, match="needs a step"):
        parse_spec({"sampler": "grid", "space": {"lr": {"type": "float", "low": 0.1, "high": 1}}})


def test_describe_lists_every_parameter() -> None:
    rows = space.describe(SPEC)
    names = [r[0] for r in rows]
    assert names[0] == "lr" and any(n.startswith("width_0") for n in names)
    assert rows[-2][3] == "optimizer in ['sgd']"
