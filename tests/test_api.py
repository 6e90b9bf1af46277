"""The Python API (tuner.api): the CLI's operations for notebooks, on real studies."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tuner
from tuner import api
from tuner.cli import app
from tuner.errors import TooManyFailures, UserCodeError


# ---- user code, defined here as it would be in a notebook ------------------------------------
def load(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Tiny regression data with a held-out test split: y = 3 x0 - 2 x1 + noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g)
    y = 3 * x[:, 0] - 2 * x[:, 1] + 0.1 * torch.randn(300, generator=g)
    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])


def build(params: dict, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_shape[0], params["hidden"]), nn.Tanh(),
                         nn.Linear(params["hidden"], num_outputs))


FOLD_SCORES: list[float] = []


def fold_fit(params: dict, ctx: Any) -> float:
    """A trainer whose score is its param x, whatever the fold; it notes each call."""
    score = params["x"] if ctx.data is not None else 10.0
    FOLD_SCORES.append(score)
    ctx.report(1, score)
    return score


def fail_fit(params: dict, ctx: Any) -> float:
    raise RuntimeError("no luck")


@pytest.fixture
def store(tmp_path: Path) -> dict[str, Any]:
    """Storage and folders for one test: pass as **store."""
    return {"storage": f"sqlite:///{tmp_path / 'api.db'}", "device": "cpu",
            "checkpoint_dir": tmp_path / "ckpt", "data_dir": tmp_path / "nodata",
            "download": False}


MODEL_SPEC = {
    "name": "api_model", "data": load, "model": build, "task": "regression", "metric": "r2",
    "epochs": 3, "trials": 3, "sampler": {"name": "tpe", "n_startup_trials": 2},
    "space": {"hidden": {"type": "int", "low": 4, "high": 32, "log": True},
              "lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
              "batch_size": 32},
}


def test_importing_tuner_imports_neither_torch_nor_optuna() -> None:
    code = ("import sys, tuner; assert tuner.run is tuner.api.run and tuner.api.trials; "
            "assert 'torch' not in sys.modules and 'optuna' not in sys.modules, 'heavy'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert tuner.best_params is api.best_params and tuner.Result is api.Result
    # the package that runs trials, not a shortcut it would shadow once imported
    trials = importlib.import_module("tuner.trials")
    assert tuner.trials is trials and callable(api.trials)


def test_run_a_dict_with_functions_then_inspect_it(store: dict[str, Any]) -> None:
    events: list[str] = []
    result = api.run(MODEL_SPEC, on_event=lambda e: events.append(e.kind), **store)
    assert result.stopped_because == "budget spent"
    assert result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0) == 3
    # the functions were named by import path, so the study can be resumed elsewhere
    assert result.spec.model == "test_api:build" and result.spec.data == "test_api:load"
    assert result.study.direction.name == "MAXIMIZE"  # r2
    assert result.best_value is not None and result.best_value > 0.5
    # best_params: what the best trial's code received, constants included
    assert result.best_params["batch_size"] == 32 and 4 <= result.best_params["hidden"] <= 32
    assert {"started", "finished"} <= set(events) and "epoch" in events

    # load / trials / best_params read the storage alone; rows are `tuner trials` JSON rows
    storage = store["storage"]
    again = api.load("api_model", storage=storage)
    assert again.best_value == result.best_value and again.best_trial == result.best_trial
    assert api.best_params("api_model", storage=storage) == result.best_params
    rows = api.trials("api_model", storage=storage)
    cli = CliRunner().invoke(app, ["trials", "api_model", "--format", "json", "--storage", storage])
    assert cli.exit_code == 0 and json.loads(cli.output) == json.loads(json.dumps(rows))
    assert rows[0]["params_hidden"] == result.study.trials[0].params["hidden"]

    # resume adds trials; run with the same spec resumes too
    assert api.resume("api_model", trials=1, **store).counts["COMPLETE"] >= 3
    assert len(api.run(MODEL_SPEC, trials=1, **store).study.trials) == 5


def test_retrain_the_best_trial_and_test_it_once(store: dict[str, Any], tmp_path: Path) -> None:
    api.run({**MODEL_SPEC, "name": "api_retrain", "trials": 2}, **store)
    r = api.retrain("api_retrain", out=tmp_path / "best", storage=store["storage"], device="cpu")
    assert r.test_samples == 50 and r.train_samples == 250
    assert r.metrics["r2"] is not None and r.metrics["r2"] > 0.5
    assert (tmp_path / "best" / "model.pt").exists()


def test_a_path_and_a_trainer_with_its_own_data(store: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "own.yaml"
    f.write_text("name: own\ntrainer: test_api:fold_fit\ntask: regression\nmetric: mae\n"
                 "epochs: 1\ntrials: 2\nspace: {x: {type: float, low: 0, high: 1}}\n")
    result = api.run(f, **store)
    assert result.counts == {"COMPLETE": 2} and result.study.direction.name == "MINIMIZE"
    assert result.best_value == 10.0  # no data: fold_fit scores 10


@pytest.mark.parametrize(("metric", "direction"), [
    ("mse", "minimize"), ("mae", "minimize"), ("r2", "maximize"), ("loss", "minimize")])
def test_regression_metrics_and_their_directions(metric: str, direction: str) -> None:
    spec = api.as_spec({"data": "diabetes", "metric": metric})
    assert spec.task_name == "regression" and spec.direction_name == direction
    assert api.as_spec({"data": "diabetes"}).metric_name == "mse"


def test_kfold_scores_the_mean_and_prunes_after_a_fold(store: dict[str, Any]) -> None:
    FOLD_SCORES.clear()
    spec = {"name": "folds", "data": load, "trainer": fold_fit, "task": "regression",
            "metric": "r2", "validation": {"kfold": 4}, "epochs": 1, "trials": 8,
            "sampler": "random", "pruner": {"name": "median", "n_startup_trials": 2},
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}
    result = api.run(spec, **store)
    trials = result.study.trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert complete and pruned, [t.state.name for t in trials]
    for t in complete:  # step k is the mean of the first k folds
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
        assert t.value == pytest.approx(t.params["x"])
    for t in pruned:  # judged as folds finish: pruned after its first fold, not trained on
        assert sorted(t.intermediate_values) == [1]
    assert len(FOLD_SCORES) == 4 * len(complete) + len(pruned)


def test_a_kfold_retry_trains_only_the_folds_its_curve_lacks(tmp_path: Path) -> None:
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from tuner.settings import Settings
    from tuner.trials import TrialRunner

    spec = api.as_spec({"name": "r", "trainer": fold_fit, "task": "regression",
                        "validation": {"kfold": 4},
                        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}})
    study = optuna.create_study()
    # the first attempt reported fold means 2 (fold 1 scored 2) and 3 (fold 2 scored 4)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"lineage": 0, "retry_of": 0}, intermediate_values={1: 2.0, 2: 3.0}))
    FOLD_SCORES.clear()
    outcome = TrialRunner.of(spec, Settings(checkpoint_dir=str(tmp_path))).run(study.ask())
    assert FOLD_SCORES == [10.0, 10.0]  # folds 3 and 4 only
    assert outcome.value == pytest.approx((2 + 4 + 10 + 10) / 4)


def test_own_data_needs_no_task_line(store: dict[str, Any]) -> None:
    space = {"hidden": 4, "lr": 0.01, "batch_size": 32}
    # the metric implies the task
    r = api.run({"name": "by_metric", "data": load, "model": build, "metric": "r2", "epochs": 1,
                 "trials": 1, "space": space}, **store)
    assert r.spec.task_name == "regression" and r.counts == {"COMPLETE": 1}
    # no metric: the float labels say regression, and the stored spec says so for workers
    r = api.run({"name": "by_labels", "data": load, "model": build, "epochs": 1, "trials": 1,
                 "space": space}, **store)
    assert (r.spec.task_name, r.spec.metric_name) == ("regression", "mse")
    assert api.load("by_labels", storage=store["storage"]).spec.task == "regression"
    assert r.study.metric_names == ["mse"]  # what optuna-dashboard labels its axes with


def test_bad_user_code_raises_before_the_study_exists(store: dict[str, Any]) -> None:
    with pytest.raises(UserCodeError, match="has no attribute 'nope'"):
        api.run({**MODEL_SPEC, "model": "test_api:nope"}, **store)
    with pytest.raises(UserCodeError, match=r"returns shape \(2, 7\)"):
        api.run({**MODEL_SPEC, "space": {"hidden": 7}, "model": "tests/test_api.py:wide",
                 "base_dir": str(Path(__file__).parent.parent)}, **store)
    with pytest.raises(TooManyFailures, match="3 trials failed in a row"):
        api.run({"name": "fails", "trainer": fail_fit, "task": "regression", "trials": 5,
                 "space": {"x": 1}}, **store)
    import optuna

    # the refused runs created nothing; the failing one ran (its code was fine to start)
    assert optuna.get_all_study_names(store["storage"]) == ["fails"]


def wide(params: dict, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """A model with one output per hidden unit: wrong for regression."""
    return nn.Linear(input_shape[0], params["hidden"])


def test_notebook_functions_cannot_go_to_worker_processes(store: dict[str, Any]) -> None:
    def fit(params: dict, ctx: Any) -> float:
        return 1.0

    fit.__module__, fit.__qualname__ = "__main__", "fit"
    with pytest.raises(UserCodeError, match="worker processes cannot import; use workers=1"):
        api.run({"trainer": fit, "task": "regression"}, workers=2, **store)
