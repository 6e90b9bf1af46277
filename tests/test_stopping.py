"""Studies that know when to stop (``stop:``), the device-time budget (``budget_hours``),
repeated configurations (``dedup``) and warm starts (``--from``): real SQLite/PostgreSQL,
real trials of a small trainer, real worker processes where several workers matter."""

from __future__ import annotations

import datetime as dt
import textwrap
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from tuner_procs import finished, start_worker, trials, write_study
from typer.testing import CliRunner

from tuner.cli import app
from tuner.config import parse_spec
from tuner.errors import SpecError
from tuner.runtime import stopping
from tuner.storage import Budget, connect, normalize_url

pytest_plugins = ["servers"]
runner = CliRunner()

# a trainer whose value never improves after the first trial: patience has to stop it
FLAT_FIT = textwrap.dedent('''
    import time


    def fit(params, ctx):
        for epoch in range(1, ctx.max_epochs + 1):
            time.sleep(params["sleep"])
            ctx.report(epoch, 1.0)
        return 1.0
''')


def flat_study(folder: Path, name: str = "flat", *, trials: int = 30, extra: str = "",
               sleep: float = 0.05) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flat.py").write_text(FLAT_FIT)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        trainer: flat.py:fit
        task: regression
        metric: mse
        epochs: 2
        trials: {trials}
        sampler: random
        pruner: none
        space:
          x: {{type: float, low: 0.0, high: 1.0}}
          sleep: {sleep}
    """) + extra)
    return path


def cli(*args: str):
    return runner.invoke(app, [*args], catch_exceptions=False)


def run_args(path: Path, url: str, tmp: Path, *extra: str) -> list[str]:
    return ["run", str(path), "--storage", url, "--device", "cpu", "--quiet",
            "--checkpoint-dir", str(tmp / "ckpt"), "--data-dir", str(tmp / "data"), *extra]


def study_names(url: str) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(connect(url))]


# ---- bad input: one line, exit 2, nothing written --------------------------------------------
@pytest.mark.parametrize(("extra", "says"), [
    ("stop: {patiense: 5}\n", "unknown key 'stop.patiense' (did you mean 'patience'?)"),
    ("budget_hours: 0\n", "budget_hours: must be a positive number of device-hours"),
    ("budget_hours: -1.5\n", "budget_hours: must be a positive number of device-hours"),
    ("stop: 5\n", "stop: give a mapping, e.g. stop: {patience: 20}"),
])
def test_bad_study_file_is_one_line_exit_2_nothing_written(tmp_path, sqlite_url, extra, says):
    path = flat_study(tmp_path, extra=extra)
    result = cli(*run_args(path, sqlite_url, tmp_path))
    assert result.exit_code == 2
    assert says in result.output and len(result.output.strip().splitlines()) == 1
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists() or not study_names(sqlite_url)


def test_budget_hours_flag_not_positive_is_exit_2_nothing_written(tmp_path, sqlite_url):
    result = cli(*run_args(flat_study(tmp_path), sqlite_url, tmp_path, "--budget-hours", "0"))
    assert result.exit_code == 2
    assert "--budget-hours" in result.output and "above 0" in result.output  # names the fix
    assert len(result.output.strip().splitlines()) == 1
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists() or not study_names(sqlite_url)


def test_from_a_study_that_does_not_exist_is_exit_2_nothing_written(tmp_path, sqlite_url):
    result = cli(*run_args(flat_study(tmp_path), sqlite_url, tmp_path, "--from", "nope"))
    assert result.exit_code == 2
    assert "--from nope: no study database at" in result.output  # nothing to start from
    assert len(result.output.strip().splitlines()) == 1
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_terminator_needs_a_single_objective():
    with pytest.raises(SpecError, match="use stop: {patience: N} in a multi-objective"):
        parse_spec({"name": "m", "objectives": ["accuracy", "params"],
                    "stop": {"terminator": True}})


# ---- patience ----------------------------------------------------------------------------------
def _trial(number: int, value: float | None, minute: int) -> optuna.trial.FrozenTrial:
    t = create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                     value=value, state=TrialState.COMPLETE if value is not None
                     else TrialState.PRUNED)
    t.number = number
    t.datetime_complete = dt.datetime(2026, 1, 1, 0, minute)
    return t


def test_patience_counts_finished_trials_since_the_best_in_finishing_order():
    spec = parse_spec({"name": "p", "data": "digits", "stop": {"patience": 3}})  # maximize
    # trial 2 finished last although it was started early: order is by completion
    ts = [_trial(0, 0.5, 0), _trial(1, 0.9, 1), _trial(3, 0.8, 2), _trial(4, None, 3)]
    assert stopping.patience_reason(spec, ts) is None  # 2 since the best
    reason = stopping.patience_reason(spec, [*ts, _trial(2, 0.7, 4)])
    assert reason is not None and "3 finished trials did not improve" in reason
    assert "(trial 1)" in reason
    assert stopping.patience_reason(spec, [*ts, _trial(2, 0.95, 4)]) is None  # improved
    pruned_only = [_trial(i, None, i) for i in range(5)]
    assert stopping.patience_reason(spec, pruned_only) is None  # nothing to improve on yet


@pytest.mark.slow
def test_patience_stops_every_worker_and_a_late_worker_does_not_restart(tmp_path, sqlite_url):
    path = flat_study(tmp_path, extra="stop: {patience: 3}\n", trials=40, sleep=0.1)
    assert cli(*run_args(path, sqlite_url, tmp_path, "--workers", "0")).exit_code == 0
    workers = [start_worker("flat", sqlite_url, tmp_path, f"w{i}") for i in range(2)]
    for w in workers:
        assert w.wait(60) == 0, w.output()
    done = finished(trials(sqlite_url, "flat"))
    # the best is the first; 3 more stop it; the other worker's trial in flight finishes
    assert 4 <= len(done) <= 5
    for w in workers:
        assert "stopped early (patience: 3 finished trials did not improve" in w.output()
    late = start_worker("flat", sqlite_url, tmp_path, "late")
    assert late.wait(60) == 0
    assert "worker done: 0 trials (stopped early (patience" in late.output()
    assert len(finished(trials(sqlite_url, "flat"))) == len(done)
    status = cli("status", "flat", "--storage", sqlite_url)
    assert "stopped early: patience: 3 finished trials" in status.output
    # asking for more explicitly lets it go on
    more = cli(*run_args(path, sqlite_url, tmp_path, "--trials", "2"))
    assert more.exit_code == 0
    assert len(finished(trials(sqlite_url, "flat"))) > len(done)


NOISY_FIT = textwrap.dedent('''
    import random

    _noise = random.Random(0)  # the same draws in every run: the verdict may not be luck


    def fit(params, ctx):
        # every configuration is as good as any other, up to fold noise: nothing to gain
        value = 0.5 + 0.01 * params["x"] + _noise.gauss(0, 0.05)
        ctx.report(1, value)
        return value
''')


@pytest.mark.slow
def test_terminator_ends_a_study_whose_regret_bound_is_below_its_fold_error(tmp_path, sqlite_url):
    (tmp_path / "noisy.py").write_text(NOISY_FIT)
    path = tmp_path / "noisy.yaml"
    path.write_text(textwrap.dedent("""
        name: noisy
        trainer: noisy.py:fit
        data: digits
        metric: accuracy
        validation: {kfold: 3}
        epochs: 1
        trials: 60
        sampler: random
        pruner: none
        stop: {terminator: true}
        space:
          x: {type: float, low: 0.0, high: 1.0}
    """))
    result = cli(*[a for a in run_args(path, sqlite_url, tmp_path) if a != "--quiet"])
    assert result.exit_code == 0, result.output
    n = len(finished(trials(sqlite_url, "noisy")))
    assert 20 <= n < 60, n  # the terminator judges from 20 completed trials on
    assert "stopped early: terminator: the regret bound fell below" in result.output
    assert "stopped early: terminator" in cli("status", "noisy", "--storage", sqlite_url).output


# ---- device-hours ------------------------------------------------------------------------------
def test_budget_seconds_are_added_atomically_and_stop_new_slots(sqlite_url):
    engine = connect(sqlite_url).engine
    b = Budget(engine, "h")
    b.initialize(None, None, hours=0.001)  # 3.6 s
    go = threading.Barrier(4)

    def spend() -> None:
        mine = Budget(connect(sqlite_url).engine, "h")
        go.wait()
        for _ in range(10):
            mine.spend(0.05)

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.state().seconds_spent == pytest.approx(2.0)
    assert b.acquire()
    b.spend(1.6)
    assert b.state().hours_spent_out and b.state().hours_left == 0
    assert not b.acquire()
    assert b.add_hours(0.001).hours_left == pytest.approx(0.001)
    assert b.acquire()
    assert b.stop("patience") and not b.stop("again")
    assert b.state().stopped == "patience" and not b.acquire()


@pytest.mark.parametrize("any_url", ["postgresql", "mysql"], indirect=True)
def test_an_older_budget_table_gets_the_new_columns(any_url):
    """A database made by a tuner before these columns: connect adds them, rows kept."""
    engine = sa.create_engine(normalize_url(any_url))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE tuner_budgets (study_name VARCHAR(512) PRIMARY KEY, "
                             "target INTEGER, taken INTEGER NOT NULL, deadline FLOAT(53))"))
        conn.execute(sa.text("INSERT INTO tuner_budgets VALUES ('old', 5, 2, NULL)"))
    engine.dispose()
    b = Budget(connect(any_url).engine, "old")
    assert b.state().seconds_spent == 0 and b.state().stopped is None
    b.spend(7.5)
    assert b.acquire() and b.state().seconds_spent == 7.5 and b.state().taken == 3


def test_budget_hours_end_the_study_and_status_shows_them(tmp_path, sqlite_url):
    path = write_study(tmp_path, "hours", trials=50, epochs=3, sleep=0.1)  # ~0.3 s a trial
    result = cli(*[a for a in run_args(path, sqlite_url, tmp_path, "--budget-hours", "0.0002")
                   if a != "--quiet"])  # 0.72 s
    assert result.exit_code == 0, result.output
    done = finished(trials(sqlite_url, "hours"))
    assert 2 <= len(done) <= 4
    assert "device-time budget spent" in result.output
    status = cli("status", "hours", "--storage", sqlite_url).output
    assert "device-hours: 0.000" in status and "0 left of 0.0002" in status
    again = cli(*run_args(path, sqlite_url, tmp_path))
    assert "device-time budget spent" in again.output
    assert len(finished(trials(sqlite_url, "hours"))) == len(done)


# ---- repeats -----------------------------------------------------------------------------------
def _grid_study(tmp: Path, dedup: bool) -> Path:
    path = write_study(tmp, "rep", trials=6, epochs=2, sleep=0.01)
    text = path.read_text().replace("x: {type: float, low: 0.0, high: 1.0}", "x: [0.25, 0.5]")
    path.write_text(text + ("" if dedup else "dedup: false\n"))
    return path


def test_a_repeated_configuration_reuses_the_earlier_result(tmp_path, sqlite_url):
    result = cli(*run_args(_grid_study(tmp_path, True), sqlite_url, tmp_path))
    assert result.exit_code == 0, result.output
    ts = [t for t in trials(sqlite_url, "rep") if t.state == TrialState.COMPLETE]
    assert len(ts) == 6
    trained = [t for t in ts if "repeat_of" not in t.user_attrs]
    repeats = [t for t in ts if "repeat_of" in t.user_attrs]
    assert len({t.params["x"] for t in trained}) == len(trained) <= 2
    by_number = {t.number: t for t in trained}
    for t in repeats:
        original = by_number[t.user_attrs["repeat_of"]]
        assert original.params == t.params and original.value == t.value
        assert t.user_attrs["epochs_run"] == 0
    rows = cli("trials", "rep", "--storage", sqlite_url, "--format", "json").output
    assert '"repeat_of": ' in rows


def test_dedup_false_trains_every_configuration(tmp_path, sqlite_url):
    result = cli(*run_args(_grid_study(tmp_path, False), sqlite_url, tmp_path))
    assert result.exit_code == 0, result.output
    ts = [t for t in trials(sqlite_url, "rep") if t.state == TrialState.COMPLETE]
    assert len(ts) == 6 and all("repeat_of" not in t.user_attrs for t in ts)
    assert all(t.user_attrs["epochs_run"] == 2 for t in ts)


# ---- warm start --------------------------------------------------------------------------------
def test_warm_start_adds_the_old_trials_that_fit_and_status_shows_lineage(tmp_path, sqlite_url):
    old = write_study(tmp_path, "old", trials=5, epochs=2, sleep=0.01)
    assert cli(*run_args(old, sqlite_url, tmp_path)).exit_code == 0
    new = tmp_path / "new.yaml"
    # a narrower space: only the old trials with x <= 0.6 fit
    new.write_text(old.read_text().replace("name: old", "name: new").replace(
        "high: 1.0", "high: 0.6").replace("trials: 5", "trials: 2"))
    fits = [t for t in trials(sqlite_url, "old") if t.params["x"] <= 0.6]
    result = cli(*run_args(new, sqlite_url, tmp_path, "--from", "old"))
    assert result.exit_code == 0, result.output
    ts = trials(sqlite_url, "new")
    added = [t for t in ts if "warm_start_from" in t.user_attrs]
    assert len(added) == len(fits)
    assert sorted(t.user_attrs["warm_start_from"] for t in added) == sorted(
        f"old#{t.number}" for t in fits)
    assert len(finished(ts)) == len(fits) + 2  # added ones take no budget
    status = cli("status", "new", "--storage", sqlite_url).output
    assert "warm start: from study old in sqlite:///" in status
    assert f"{len(fits)} finished trials added" in status


def test_warm_start_across_trainings_needs_enqueue_top(tmp_path, sqlite_url):
    old = write_study(tmp_path, "old", trials=4, epochs=2, sleep=0.01)
    assert cli(*run_args(old, sqlite_url, tmp_path)).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    new = write_study(other, "new", trials=2, epochs=3, sleep=0.01)  # epochs differ
    refused = cli(*run_args(new, sqlite_url, other, "--from", "old"))
    assert refused.exit_code == 2 and "pass --enqueue-top K" in refused.output
    assert "new" not in study_names(sqlite_url)
    result = cli(*run_args(new, sqlite_url, other, "--from", "old", "--enqueue-top", "2"))
    assert result.exit_code == 0, result.output
    best = sorted((t for t in trials(sqlite_url, "old") if t.state == TrialState.COMPLETE),
                  key=lambda t: t.value)[:2]  # mse: minimize
    ts = sorted(trials(sqlite_url, "new"), key=lambda t: t.number)
    assert [t.params["x"] for t in ts[:2]] == [t.params["x"] for t in best]
    assert "its 2 best configurations enqueued" in cli("status", "new", "--storage",
                                                       sqlite_url).output


def test_warm_start_from_another_storage(tmp_path, sqlite_url):
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    old = write_study(tmp_path, "old", trials=3, epochs=2, sleep=0.01)
    assert cli(*run_args(old, other_url, tmp_path)).exit_code == 0
    new = tmp_path / "new.yaml"
    new.write_text(old.read_text().replace("name: old", "name: new").replace("trials: 3",
                                                                             "trials: 1"))
    result = cli(*run_args(new, sqlite_url, tmp_path, "--from", "old", "--from-storage",
                           other_url))
    assert result.exit_code == 0, result.output
    assert len(finished(trials(sqlite_url, "new"))) == 4
    assert "3 finished trials added" in cli("status", "new", "--storage", sqlite_url).output


def test_enqueue_top_without_from_is_exit_2(tmp_path, sqlite_url):
    result = cli(*run_args(flat_study(tmp_path), sqlite_url, tmp_path, "--enqueue-top", "2"))
    assert result.exit_code == 2 and "go with --from OLD_STUDY" in result.output
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists() or not study_names(sqlite_url)


@pytest.mark.slow
def test_workers_asking_at_once_train_an_identical_configuration_once(tmp_path, sqlite_url):
    """Two workers, a space of one configuration: the later trial waits for the running one
    and reuses its result instead of training the same thing at the same time."""
    path = write_study(tmp_path, "one", trials=4, epochs=3, sleep=0.3)
    path.write_text(path.read_text().replace("x: {type: float, low: 0.0, high: 1.0}",
                                             "x: [0.5]"))
    assert cli(*run_args(path, sqlite_url, tmp_path, "--workers", "0")).exit_code == 0
    workers = [start_worker("one", sqlite_url, tmp_path, f"w{i}") for i in range(2)]
    for w in workers:
        assert w.wait(60) == 0, w.output()
    ts = [t for t in trials(sqlite_url, "one") if t.state == TrialState.COMPLETE]
    assert len(ts) == 4
    trained = [t for t in ts if "repeat_of" not in t.user_attrs]
    assert len(trained) == 1
    assert all(t.user_attrs["repeat_of"] == trained[0].number and t.value == trained[0].value
               for t in ts if t is not trained[0])
    # the waiting repeats spent no device time: only the trained trial counts
    spent = Budget(connect(sqlite_url).engine, "one").state().seconds_spent
    assert trained[0].user_attrs["wall_time_s"] * 0.9 <= spent
    assert spent <= trained[0].user_attrs["wall_time_s"] + 0.5
