"""Several objectives, pruning them, and constraints: the study file, the pruning view of a
multi-objective study (real SQLite, Optuna's own pruners), and real training on digits."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from tuner import storage
from tuner import study as st
from tuner.cli import app
from tuner.config import parse_spec
from tuner.errors import SpecError
from tuner.results.retrain import pick_trial
from tuner.results.status import pareto_front, trial_rows
from tuner.runtime.worker import Worker
from tuner.settings import Settings
from tuner.storage import Heartbeat, connect
from tuner.trials import TrialRunner

pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
HB = Heartbeat(interval=1, grace_period=2)
runner = CliRunner()

BASE = {"name": "mo", "data": "digits", "model": "mlp", "sampler": "random",
        "space": {"width": {"type": "int", "low": 8, "high": 128, "log": True}}}


# ---- the study file ---------------------------------------------------------------------
def test_objectives_take_names_or_mappings_and_default_their_directions():
    spec = parse_spec({**BASE, "objectives": ["accuracy", {"metric": "latency_ms"}, "params"]})
    assert spec.objective_names == ["accuracy", "latency_ms", "params"]
    assert spec.directions == ["maximize", "minimize", "minimize"]
    assert spec.multi_objective and spec.metric_name == "accuracy"
    # the reported (pruned-on) metric need not come first
    spec = parse_spec({**BASE, "objectives": ["params", "loss"]})
    assert spec.metric_name == "loss" and spec.direction_name == "minimize"


BAD = {
    "unknown metric": ({"objectives": ["accuracy", "flops"]}, "unknown metric 'flops'"),
    "contradicting direction": ({"objectives": [{"metric": "params", "direction": "maximize"}]},
                                "params is a metric to minimize"),
    "only secondary metrics": ({"objectives": ["params", "size_mb"]}, "at least one metric"),
    "metric and objectives": ({"metric": "accuracy", "objectives": ["accuracy", "params"]},
                              "not both"),
    "wrong task": ({"objectives": ["accuracy", "mse"]}, "mse is not a classification metric"),
    "constraint not produced": ({"objectives": ["accuracy", "params"],
                                 "constraints": {"flops": {"max": 3}}},
                                "does not produce 'flops'"),
    "empty constraint": ({"constraints": {"params": {}}}, "needs min:, max: or both"),
    "prune_on not an objective": ({"objectives": ["accuracy", "params"], "prune_on": "loss"},
                                  "not one of the objectives"),
    "prune_on without a curve": ({"objectives": ["accuracy", "params"], "prune_on": "params"},
                                 "has no learning curve"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_objectives_and_constraints_are_one_line(case):
    extra, message = BAD[case]
    with pytest.raises(SpecError, match=message) as err:
        parse_spec({**BASE, **extra})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["unknown metric", "contradicting direction",
                                  "constraint not produced"])
def test_bad_objectives_exit_2_and_write_nothing(case, tmp_path):
    extra, message = BAD[case]
    f = tmp_path / "bad.yaml"
    f.write_text(json.dumps({**BASE, **extra}))  # JSON is YAML
    db = tmp_path / "t.db"
    r = runner.invoke(app, ["run", str(f), "--storage", f"sqlite:///{db}", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not db.exists()


# ---- pruning a multi-objective study -------------------------------------------------------
def _mo_study(tmp_path: Path, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="p",
                               directions=["maximize", "minimize"], pruner=pruner)


def _finished(study: optuna.Study, curve: list[float], size: float) -> None:
    """A trial that ran its whole curve, asking the pruner each epoch as a worker does (the
    successive-halving pruners record its rungs then)."""
    t = study.ask()
    for step, v in enumerate(curve, 1):
        storage.report_primary(t, step, v)
        storage.should_prune_primary(t, 0, "maximize", study.pruner)
    study.tell(t, [curve[-1], size])


@pytest.mark.parametrize("pruner", [
    optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    optuna.pruners.HyperbandPruner(min_resource=1, max_resource=4, reduction_factor=3),
], ids=["median", "successive_halving", "hyperband"])
def test_optunas_pruners_judge_the_primary_curve_of_a_multi_objective_study(tmp_path, pruner):
    study = _mo_study(tmp_path, pruner)
    with pytest.raises(NotImplementedError):  # what Optuna itself does
        t = study.ask()
        t.report(0.5, 1)
    study.tell(t, state=TrialState.FAIL)
    for i in range(12):
        _finished(study, [0.8 + 0.01 * i, 0.9, 0.92, 0.95], size=100.0 + i)
    bad, good = study.ask(), study.ask()
    for step in (1, 2):
        storage.report_primary(bad, step, 0.1)
        storage.report_primary(good, step, 0.99 + 0.001 * step)
    # the curve is in the database, where every worker reads it
    assert storage.refreshed(bad).intermediate_values == {1: 0.1, 2: 0.1}
    assert storage.should_prune_primary(bad, 0, "maximize", pruner)
    assert not storage.should_prune_primary(good, 0, "maximize", pruner)
    # the same curves judged as a loss to minimize turn the decisions round
    assert not storage.should_prune_primary(bad, 0, "minimize", optuna.pruners.MedianPruner(3, 1))
    # the stored trials keep both objectives
    assert all(len(t.values) == 2 for t in study.get_trials(states=(TrialState.COMPLETE,)))


# ---- real training ---------------------------------------------------------------------
def _handle(tmp_path: Path, **extra):
    spec = parse_spec({**BASE, "epochs": 3, "trials": 6, **extra})
    return st.create_or_resume(connect(f"sqlite:///{tmp_path / 'tuner.db'}", HB), spec)


def _work(handle, tmp_path: Path) -> None:
    settings = Settings(device="cpu", checkpoint_dir=str(tmp_path / "ckpt"))
    Worker(handle, TrialRunner.of(handle.spec, settings), heartbeat=HB).run()


@pytest.mark.slow
def test_a_multi_objective_study_trains_prunes_and_has_a_front(tmp_path):
    handle = _handle(tmp_path, trials=8,
                     objectives=["accuracy", "params", "latency_ms", "epoch_s"],
                     pruner={"name": "median", "n_startup_trials": 2, "min_epochs": 1})
    _work(handle, tmp_path)
    study = handle.study
    assert len(study.directions) == 4
    assert study.metric_names == ["accuracy", "params", "latency_ms", "epoch_s"]
    trials = study.get_trials(deepcopy=False)
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in done:
        acc, params, latency, epoch_s = t.values
        assert 0.0 < acc <= 1.0 and latency > 0 and epoch_s > 0
        # digits: 64 inputs, 10 classes; the mlp's parameter count as training counted it
        assert params == t.user_attrs["param_count"]
        assert t.intermediate_values[3] == acc  # the primary curve was recorded per epoch
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for t in pruned:
        assert t.values is None and len(t.intermediate_values) < 3
    front = pareto_front(handle)
    assert front and {t.number for t in front} <= {t.number for t in done}
    rows = trial_rows(study, handle.spec)
    assert {"accuracy", "params", "latency_ms", "epoch_s"} <= set(rows[0]) and "value" not in rows[0]


@pytest.mark.slow
def test_a_constraint_known_before_training_rejects_without_an_epoch(tmp_path):
    handle = _handle(tmp_path, trials=6, objectives=["accuracy", "params"], pruner="none",
                     constraints={"params": {"max": 3000}},
                     space={"width": [4, 8, 200, 256], "depth": 1})  # 64w+w + 10w+10 params
    _work(handle, tmp_path)
    trials = handle.study.get_trials(deepcopy=False)
    wide = [t for t in trials if t.params["width"] >= 200]
    narrow = [t for t in trials if t.params["width"] < 200]
    assert wide and narrow
    for t in wide:
        assert t.state == TrialState.PRUNED and "infeasible" in t.user_attrs
        assert t.user_attrs.get("epochs_run", 0) == 0 and not t.intermediate_values
        assert t.constraints["params"] == 75 * t.params["width"] + 10 - 3000
    for t in narrow:
        assert t.state == TrialState.COMPLETE and t.constraints["params"] <= 0
    states = {r["number"]: r["state"] for r in trial_rows(handle.study, handle.spec)}
    # four configurations for six trials: the random sampler (which learns from nothing)
    # must draw some configuration twice; a drawn-again infeasible one reuses the rejection
    # and counts as REPEAT, every other wide one as INFEASIBLE
    fresh = [t for t in wide if "repeat_of" not in t.user_attrs]
    assert fresh and {states[t.number] for t in fresh} == {"INFEASIBLE"}
    assert all(states[t.number] == "REPEAT" and t.user_attrs["repeat_of"] in
               {f.number for f in fresh} for t in wide if t not in fresh)
    assert {t.number for t in pareto_front(handle)} <= {t.number for t in narrow}
    # the report draws the Pareto front and lists the front's trials with both objectives
    from tuner.results import report

    result = report.build(handle, tmp_path / "report")
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 0
    page = result.html.read_text()
    assert "Pareto front" in page and "trials of the Pareto front" in page
    assert "<th>params</th>" in page and "<th>accuracy</th>" in page


TUPLE_FIT = textwrap.dedent("""
    def fit(params, ctx):
        for epoch in range(1, ctx.max_epochs + 1):
            ctx.report(epoch, params["x"] * epoch, cost=params["x"] ** 2)
        return params["x"] * ctx.max_epochs, params["x"]
""")


def test_a_trainer_returns_several_values(tmp_path):
    (tmp_path / "fit.py").write_text(TUPLE_FIT)
    spec = parse_spec({"name": "tup", "trainer": "fit.py:fit", "task": "regression", "epochs": 2,
                       "trials": 3, "sampler": "random", "pruner": "none",
                       "objectives": [{"metric": "score", "direction": "maximize"},
                                      {"metric": "slack", "direction": "minimize"}],
                       "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}},
                      base_dir=str(tmp_path))
    handle = st.create_or_resume(connect(f"sqlite:///{tmp_path / 'tuner.db'}", HB), spec)
    _work(handle, tmp_path)
    for t in handle.study.get_trials(deepcopy=False):
        assert t.state == TrialState.COMPLETE
        x = t.params["x"]
        assert math.isclose(t.values[0], 2 * x) and math.isclose(t.values[1], x)
    # score against slack: every trial is on the front (more x, more score and more slack)
    assert len(pareto_front(handle)) == 3
    xs = sorted(t.params["x"] for t in handle.study.trials)
    assert pick_trial(handle).params["x"] == xs[-1]  # the first objective's best
    assert pick_trial(handle, prefer="slack").params["x"] == xs[0]
    with pytest.raises(SpecError, match="--prefer accuracy: not an objective"):
        pick_trial(handle, prefer="accuracy")


@pytest.mark.slow
def test_best_prints_the_pareto_front(tmp_path, monkeypatch):
    f = tmp_path / "mo.yaml"
    f.write_text(json.dumps({**BASE, "epochs": 2, "trials": 3, "pruner": "none",
                             "objectives": ["accuracy", "params"]}))
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    r = runner.invoke(app, ["run", str(f), "--storage", url, "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["best", "mo", "--storage", url, "--json"])
    assert r.exit_code == 0, r.output
    best = json.loads(r.output)
    assert best["objectives"] == ["accuracy", "params"] and best["front"]
    r = runner.invoke(app, ["best", "mo", "--storage", url])
    assert "Pareto front of mo" in r.output and "params" in r.output
    r = runner.invoke(app, ["trials", "mo", "--storage", url, "-f", "csv"])
    assert r.output.splitlines()[0].startswith("number,state,accuracy,params")
