"""Features where they meet: every sampler with two objectives and pruning, sampling across
resumes and workers, grid searches that run out, k-fold and retrain with two objectives,
stop rules with ASHA and with more budget, and samplers that learn from pruned and infeasible
trials. Real SQLite, real trials of a toy trainer (and real training on digits where the
model matters), workers in this process or real worker processes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from tuner_procs import assert_refused, start_together, worker_args
from typer.testing import CliRunner

from tuner import study as st
from tuner.cli import app
from tuner.config import parse_spec
from tuner.runtime.worker import Worker
from tuner.settings import Settings
from tuner.storage import Heartbeat, connect
from tuner.trials import TrialRunner

pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
HB = Heartbeat(interval=1, grace_period=2)
runner = CliRunner()

# two objectives: a score whose curve climbs to x (pruned on), and a cost y
FIT = textwrap.dedent("""
    def fit(params, ctx):
        for epoch in range(1, ctx.max_epochs + 1):
            ctx.report(epoch, params["x"] * epoch / ctx.max_epochs)
        return params["x"], params["y"]


    def one(params, ctx):
        for epoch in range(1, ctx.max_epochs + 1):
            ctx.report(epoch, params["x"] * epoch / ctx.max_epochs)
        return params["x"]


    def flat(params, ctx):  # never improves on the first trial
        for epoch in range(1, ctx.max_epochs + 1):
            ctx.report(epoch, 1.0)
        return 1.0


    def rising(params, ctx):  # every trial (and every segment) beats the ones before it
        state = ctx.load_checkpoint()
        start = 1 if state is None else int(state["epoch"]) + 1
        for epoch in range(start, ctx.max_epochs + 1):
            ctx.save_checkpoint({"epoch": epoch})
            ctx.report(epoch, ctx.trial_number + epoch / 100)
        return ctx.trial_number + ctx.max_epochs / 100
""")
TWO = [{"metric": "score", "direction": "maximize"}, {"metric": "cost", "direction": "minimize"}]
SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0},
         "y": {"type": "float", "low": 0.0, "high": 1.0}}


def toy(tmp_path: Path, **extra: Any):
    (tmp_path / "fit.py").write_text(FIT)
    spec = {"name": "combo", "trainer": "fit.py:fit", "task": "regression", "epochs": 3,
            "trials": 8, "sampler": "random", "pruner": "none", "objectives": TWO,
            "space": SPACE, **extra}
    return parse_spec(spec, base_dir=str(tmp_path))


def url_of(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def work(handle, tmp_path: Path) -> str:
    settings = Settings(device="cpu", checkpoint_dir=str(tmp_path / "ckpt"))
    return Worker(handle, TrialRunner.of(handle.spec, settings), heartbeat=HB).run().stopped_because


def states(handle) -> list[TrialState]:
    return [t.state for t in handle.study.get_trials(deepcopy=False)]


def one_objective(tmp_path: Path, trainer: str, **extra: Any):
    return toy(tmp_path, trainer=f"fit.py:{trainer}", objectives=None, metric="r2", **extra)


def _params(handle) -> list[tuple[float, float]]:
    return [(t.params["x"], t.params["y"]) for t in handle.study.get_trials(deepcopy=False)]


# ---- (a) two objectives, pruning, every sampler past its start-up ----------------------------
@pytest.mark.parametrize("sampler", [
    "tpe", "random", "qmc", "nsga2", pytest.param("gp", marks=pytest.mark.slow)])
def test_two_objectives_prune_with_every_sampler_for_the_whole_budget(tmp_path, sampler):
    spec = toy(tmp_path, trials=14, sampler={"name": sampler, "n_startup_trials": 3}
               if sampler in ("tpe", "gp", "nsga2") else sampler,
               pruner={"name": "median", "n_startup_trials": 2, "min_epochs": 1})
    handle = st.create_or_resume(connect(url_of(tmp_path), HB), spec)
    assert work(handle, tmp_path) == "budget spent"
    got = states(handle)
    assert len(got) == 14 and TrialState.FAIL not in got, [
        t.user_attrs.get("fail_reason") for t in handle.study.trials]
    # the pruned trials (whose curve TPE ranks) came before the end of the budget
    assert TrialState.PRUNED in got[:-3] and TrialState.COMPLETE in got
    # no pruned configuration was proposed again (a complete one may be: GP converging on
    # the best corner, NSGA-II's crossover keeping a parent whole; dedup reuses its result)
    ts = handle.study.get_trials(deepcopy=False)
    again = {t.user_attrs["repeat_of"] for t in ts if "repeat_of" in t.user_attrs}
    assert {ts[n].state for n in again} <= {TrialState.COMPLETE}
    if sampler == "nsga2":  # past its first generation (of 3), pruned trials counted in
        assert max(t.system_attrs.get("NSGAIISampler:generation", 0)
                   for t in handle.study.trials) >= 2


@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_two_objectives_with_tpe_and_every_pruner(tmp_path, pruner):
    spec = toy(tmp_path, trials=12, epochs=4, sampler={"name": "tpe", "n_startup_trials": 3},
               pruner={"name": pruner, "min_epochs": 1, "reduction_factor": 2})
    handle = st.create_or_resume(connect(url_of(tmp_path), HB), spec)
    assert work(handle, tmp_path) == "budget spent"
    got = states(handle)
    assert len(got) == 12 and TrialState.FAIL not in got and TrialState.PRUNED in got


@pytest.mark.parametrize("sampler", ["cmaes", "gp", "grid"])
def test_one_objective_prunes_with_every_sampler_for_the_whole_budget(tmp_path, sampler):
    space = {"x": [0.1, 0.3, 0.5, 0.7, 0.9], "y": [0.1, 0.5]} if sampler == "grid" else SPACE
    spec = one_objective(tmp_path, "one", trials=10, space=space,
                         sampler={"name": sampler, "n_startup_trials": 3}
                         if sampler in ("cmaes", "gp") else sampler,
                         pruner={"name": "median", "n_startup_trials": 2, "min_epochs": 1})
    handle = st.create_or_resume(connect(url_of(tmp_path), HB), spec)
    work(handle, tmp_path)
    got = states(handle)
    assert len(got) == 10 and TrialState.FAIL not in got
    assert TrialState.PRUNED in got and TrialState.COMPLETE in got
    # a configuration is drawn again only where the sampler converges on a finished one (GP
    # on the best corner); dedup then reuses its result, nothing is trained twice
    ts = handle.study.get_trials(deepcopy=False)
    first: dict[tuple[float, float], int] = {}
    for t, drawn in zip(ts, _params(handle), strict=True):
        if drawn in first:
            assert t.user_attrs.get("repeat_of") == first[drawn], (t.number, drawn)
            assert ts[first[drawn]].state == TrialState.COMPLETE
        first.setdefault(drawn, t.number)
    if sampler != "gp":
        assert len(first) == len(ts)


# ---- (b) sampling: reproducible, never repeating ---------------------------------------------
@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc"])
def test_run_resume_resume_and_a_second_worker_draw_new_configurations(tmp_path, sampler):
    spec = toy(tmp_path, trials=3, sampler=sampler)
    url = url_of(tmp_path)
    handle = st.create_or_resume(connect(url, HB), spec)
    work(handle, tmp_path)
    for _ in range(2):  # `tuner resume --trials 3`, twice: a fresh process each time
        again = st.load(connect(url, HB), "combo")
        st.add_budget(again, 3, None)
        work(again, tmp_path)
    # two workers with the same index join the study
    st.add_budget(st.load(connect(url, HB), "combo"), 4, None)
    for _ in range(2):
        work(st.load(connect(url, HB), "combo", worker_index=0), tmp_path)
    drawn = _params(st.load(connect(url, HB), "combo"))
    assert len(drawn) == 13 and len(set(drawn)) == 13
    ts = st.load(connect(url, HB), "combo").study.get_trials(deepcopy=False)
    assert not [t.number for t in ts if "repeat_of" in t.user_attrs]


@pytest.mark.slow
def test_two_worker_processes_with_the_same_index_draw_apart(tmp_path):
    (tmp_path / "fit.py").write_text(FIT)
    path = tmp_path / "combo.yaml"
    path.write_text(json.dumps({"name": "combo", "trainer": "fit.py:one", "task": "regression",
                                "metric": "r2", "epochs": 2, "trials": 8, "sampler": "random",
                                "pruner": "none", "space": SPACE}))
    url = url_of(tmp_path)
    r = runner.invoke(app, ["run", str(path), "--storage", url, "--workers", "0"])
    assert r.exit_code == 0, r.output
    procs = start_together([worker_args("combo", url, tmp_path, "--worker-index", "0")
                            for _ in range(2)], tmp_path)
    for p in procs:
        assert p.wait(120) == 0, p.output()
    ts = st.load(connect(url, HB), "combo").study.get_trials(deepcopy=False)
    assert len(ts) == 8 and not [t.number for t in ts if "repeat_of" in t.user_attrs]
    assert len({(t.params["x"], t.params["y"]) for t in ts}) == 8


def test_the_same_seed_draws_the_same_sequence_in_one_process(tmp_path):
    url = url_of(tmp_path)
    seqs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        spec = toy(tmp_path, name=name, seed=seed, trials=4, sampler="tpe")
        handle = st.create_or_resume(connect(url, HB), spec)
        work(handle, tmp_path)
        seqs.append(_params(handle))
    assert seqs[0] == seqs[1] and len(set(seqs[0])) == 4
    assert not set(seqs[0]) & set(seqs[2])


# ---- (c) CMA-ES optimizes one objective: refused up front -----------------------------------
def test_cmaes_with_two_objectives_is_refused_by_check_and_run(tmp_path):
    (tmp_path / "fit.py").write_text(FIT)
    path = tmp_path / "cma.yaml"
    path.write_text(json.dumps({"name": "cma", "trainer": "fit.py:fit", "task": "regression",
                                "sampler": "cmaes", "objectives": TWO, "space": SPACE}))
    assert_refused(path, tmp_path, "sampler: cmaes optimizes one objective")


def test_nsga2_needs_a_population_of_two():
    from tuner.errors import SpecError

    with pytest.raises(SpecError, match="nsga2's n_startup_trials is its population size"):
        parse_spec({"name": "n", "data": "digits", "objectives": ["accuracy", "params"],
                    "sampler": {"name": "nsga2", "n_startup_trials": 1}})


# ---- real training on digits: k-fold and retrain with two objectives -------------------------
DIGITS = {"name": "mo", "data": "digits", "model": "mlp", "sampler": "random", "epochs": 1,
          "objectives": ["accuracy", "params"], "pruner": "none",
          "space": {"width": {"type": "int", "low": 8, "high": 64, "log": True}, "depth": 1}}


@pytest.mark.slow
def test_kfold_with_two_objectives_scores_every_trial(tmp_path):
    spec = parse_spec({**DIGITS, "trials": 3, "validation": {"kfold": 2},
                       "pruner": {"name": "median", "n_startup_trials": 1, "min_epochs": 1}})
    handle = st.create_or_resume(connect(url_of(tmp_path), HB), spec)
    work(handle, tmp_path)
    ts = handle.study.get_trials(deepcopy=False)
    assert len(ts) == 3 and {t.state for t in ts} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in ts:  # the running mean over folds is the accuracy's curve
        assert t.intermediate_values and t.intermediate_values.keys() <= {1, 2}
        if t.state == TrialState.COMPLETE:
            assert t.values[0] == pytest.approx(t.intermediate_values[2])


@pytest.mark.slow
def test_retrain_of_a_two_objective_study_writes_its_card(tmp_path):
    f = tmp_path / "mo.yaml"
    f.write_text(json.dumps({**DIGITS, "trials": 2}))
    url = url_of(tmp_path)
    r = runner.invoke(app, ["run", str(f), "--storage", url, "--device", "cpu", "-q",
                            "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "model"
    r = runner.invoke(app, ["retrain", "mo", "--storage", url, "--device", "cpu",
                            "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    card = json.loads((out / "model.json").read_text())
    best = st.load(connect(url, HB), "mo")
    t = best.study.trials[card["trial"]]
    assert card["validation_value"] == t.values[0]
    assert card["validation_values"] == {"accuracy": t.values[0], "params": t.values[1]}
    assert 0.0 < card["test_metrics"]["accuracy"] <= 1.0
    assert st.load(connect(url, HB), "mo").study.user_attrs[f"retrain.{t.number}"]


# ---- (f) a grid search whose budget covers the grid -----------------------------------------
def grid_file(tmp_path: Path, **extra: Any) -> Path:
    (tmp_path / "fit.py").write_text(FIT)
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps({
        "name": "grid", "trainer": "fit.py:one", "task": "regression", "metric": "mse",
        "epochs": 2, "trials": 10, "sampler": "grid", "pruner": "none",
        "space": {"x": [0.1, 0.2, 0.3], "y": [0.1, 0.5]}, **extra}))
    return path


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_a_grid_search_ends_cleanly_once_its_grid_is_covered(tmp_path, workers):
    path, url = grid_file(tmp_path), url_of(tmp_path)
    r = runner.invoke(app, ["run", str(path), "--storage", url, "--device", "cpu", "-q",
                            "--workers", workers, "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "Study.stop" not in r.output
    handle = st.load(connect(url, HB), "grid")
    ts = handle.study.get_trials(deepcopy=False)
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 6
    assert len({(t.params["x"], t.params["y"]) for t in ts}) == 6
    assert "grid exhausted" in (handle.budget.state().stopped or "")
    r = runner.invoke(app, ["resume", "grid", "--storage", url, "--device", "cpu"])
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 1, r.output
    assert "grid exhausted: every one of its 6 points was tried" in r.output
    assert "--trials" not in r.output
    r = runner.invoke(app, ["resume", "grid", "--storage", url, "--device", "cpu", "--trials", "3"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "tried every point of its grid (6)" in r.output
    assert len(st.load(connect(url, HB), "grid").study.get_trials(deepcopy=False)) == 6


def test_a_grid_search_resumed_takes_only_the_points_left(tmp_path):
    path, url = grid_file(tmp_path, trials=4), url_of(tmp_path)
    args = ["--storage", url, "--device", "cpu", "-q", "--checkpoint-dir", str(tmp_path / "c")]
    assert runner.invoke(app, ["run", str(path), *args]).exit_code == 0
    r = runner.invoke(app, ["resume", "grid", "--trials", "5", *args])
    assert r.exit_code == 0, r.output
    ts = st.load(connect(url, HB), "grid").study.get_trials(deepcopy=False)
    assert len(ts) == 6 and len({(t.params["x"], t.params["y"]) for t in ts}) == 6


# ---- (g, h) stop: {patience: N} with ASHA, and with more budget ------------------------------
def test_paused_asha_segments_are_not_trials_that_did_not_improve(tmp_path):
    spec = one_objective(tmp_path, "rising", trials=9, epochs=4, stop={"patience": 2},
                         pruner={"name": "asha", "min_epochs": 1, "reduction_factor": 2})
    handle = st.create_or_resume(connect(url_of(tmp_path), HB), spec)
    assert work(handle, tmp_path) == "budget spent"
    assert handle.budget.state().stopped is None
    ts = handle.study.get_trials(deepcopy=False)
    assert any("paused_at" in t.user_attrs for t in ts)  # ASHA did pause segments
    assert len({t.user_attrs["lineage"] for t in ts}) == 9


def test_a_study_stopped_by_patience_runs_the_trials_it_is_given(tmp_path):
    spec = one_objective(tmp_path, "flat", trials=30, stop={"patience": 3})
    url = url_of(tmp_path)
    handle = st.create_or_resume(connect(url, HB), spec)
    assert work(handle, tmp_path).startswith("stopped early (patience: 3")
    assert len(handle.study.get_trials(deepcopy=False)) == 4
    # 2 more: both run (patience counts from the first of them, not over the history)
    # 5 more after those: the count goes on (the study was not stopped), 1 more stops it
    for more, why, total in ((2, "budget spent", 6), (5, "stopped early (patience: 3", 7)):
        again = st.load(connect(url, HB), "combo")
        st.add_budget(again, more, None)
        assert work(again, tmp_path).startswith(why)
        assert len(again.study.get_trials(deepcopy=False)) == total


# ---- (i) samplers learn from pruned and infeasible trials ------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["gp", "tpe"])
def test_no_sampler_proposes_an_infeasible_configuration_again(tmp_path, sampler):
    # an mlp of one hidden layer has 75 * width + 10 parameters on digits: width <= 39 fits
    spec = parse_spec({**DIGITS, "objectives": None, "metric": "accuracy", "trials": 12,
                       "sampler": {"name": sampler, "n_startup_trials": 3},
                       "constraints": {"params": {"max": 3000}},
                       "space": {"width": {"type": "int", "low": 8, "high": 256, "log": True},
                                 "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                                 "depth": 1}})
    handle = st.create_or_resume(connect(url_of(tmp_path), HB), spec)
    work(handle, tmp_path)
    ts = handle.study.get_trials(deepcopy=False)
    assert len(ts) == 12 and TrialState.FAIL not in {t.state for t in ts}
    assert [t.number for t in ts if "repeat_of" in t.user_attrs] == []
    infeasible = [t for t in ts if "infeasible" in t.user_attrs]
    assert len(infeasible) < 8  # it learnt where the constraint holds
