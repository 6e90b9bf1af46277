"""Steering a running study (tuner.results.controls, `tuner stop / pause / continue / extend /
stop-trial / retry`): real worker processes on a real database obey each control within a
heartbeat, and every bad input is refused in one line before anything is written."""

from __future__ import annotations

import os

import pytest
from optuna.trial import TrialState
from tuner_procs import finished, start_worker, trials, wait_for, write_study
from typer.testing import CliRunner

from tuner.cli import app
from tuner.storage import USER_STOP, Heartbeat, connect, read_controls

pytest_plugins = ["servers"]


def cli(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def refused(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    return r.output


def held(tmp_path) -> str:
    """A file whose existence keeps each trial's first attempt running after its first
    epoch (tests/tuner_procs.py): the test decides when trials go on, not the CPU's load."""
    hold = tmp_path / "hold"
    hold.touch()
    return str(hold)


def running(url: str) -> list:
    return [t for t in trials(url, "toy") if t.state == TrialState.RUNNING]


def epochs_in(url: str) -> bool:
    ts = running(url)
    return len(ts) == 2 and all(t.intermediate_values for t in ts)


@pytest.mark.slow
@pytest.mark.parametrize("any_url", ["sqlite", "postgresql"], indirect=True)
def test_stop_checkpoints_running_trials_and_workers_exit_0(any_url, tmp_path):
    # first attempts take 0.2 s an epoch (room to see the stop before their 40th); a retry,
    # and any trial of the workers started later, 0.05 s
    study = write_study(tmp_path, trials=20, epochs=40, sleep=0.05)
    hold = held(tmp_path)
    workers = [start_worker(str(study), any_url, tmp_path, f"w{i}",
                            env={"FIT_HOLD": hold, "FIT_SLEEP": "0.2"}) for i in range(2)]
    wait_for("two trials past an epoch", lambda: epochs_in(any_url), 120, every=0.3)
    before = {t.number for t in trials(any_url, "toy")}
    cli("stop", "toy", "--storage", any_url)
    os.unlink(hold)  # the trials go on, to see the stop at their next epoch
    for w in workers:  # a heartbeat (1 s) and an epoch (0.2 s), with room for a busy CPU
        assert w.wait(30) == 0, w.output()
        assert "Traceback" not in w.output()
    ts = trials(any_url, "toy")
    stopped = [t for t in ts if t.state == TrialState.FAIL]
    assert {t.number for t in stopped} <= before and len(stopped) == 2
    assert all(t.user_attrs["epochs_run"] < 40 for t in stopped)
    # each is queued again, to go on from its checkpoint's epoch
    waiting = [t for t in ts if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t.number for t in stopped)
    assert not running(any_url) and len(ts) == len(before) + 2
    # a worker joining later takes nothing either, until the study goes on
    late = start_worker("toy", any_url, tmp_path, "late")
    assert late.wait(60) == 0, late.output()
    assert len(trials(any_url, "toy")) == len(ts)
    cli("continue", "toy", "--storage", any_url)
    assert read_controls(connect(any_url, Heartbeat(1, 3)).engine, "toy").stop is None
    again = start_worker("toy", any_url, tmp_path, "again")
    wait_for("a stopped trial resumed", lambda: any(
        t.user_attrs.get("start_epoch", 1) > 1 for t in finished(trials(any_url, "toy"))), 120)
    again.popen.terminate()
    again.wait(60)


@pytest.mark.slow
def test_pause_holds_new_trials_and_extend_lets_workers_go_on(sqlite_url, tmp_path):
    study = write_study(tmp_path, trials=4, epochs=12, sleep=0.25)
    hold = held(tmp_path)
    workers = [start_worker(str(study), sqlite_url, tmp_path, f"w{i}", env={"FIT_HOLD": hold})
               for i in range(2)]
    wait_for("two trials past an epoch", lambda: epochs_in(sqlite_url), 120, every=0.3)
    cli("pause", "toy", "--storage", sqlite_url)
    first = {t.number for t in running(sqlite_url)}
    os.unlink(hold)  # the running trials go on while the study is paused
    wait_for("the running trials to finish", lambda: len(finished(trials(sqlite_url, "toy")))
             >= 2, 60)
    import time

    time.sleep(3)  # three heartbeats: a worker that ignored the pause would have started one
    assert {t.number for t in trials(sqlite_url, "toy")} == first
    assert all(w.popen.poll() is None for w in workers), "paused workers stay"
    cli("extend", "toy", "--trials", "2", "--storage", sqlite_url)
    cli("continue", "toy", "--storage", sqlite_url)
    for w in workers:
        assert w.wait(120) == 0, w.output()
    assert len(finished(trials(sqlite_url, "toy"))) == 6


@pytest.mark.slow
def test_stop_trial_then_retry_resumes_it(sqlite_url, tmp_path):
    study = write_study(tmp_path, trials=3, epochs=30, sleep=0.2)
    hold = held(tmp_path)
    w = start_worker(str(study), sqlite_url, tmp_path, "w", env={"FIT_HOLD": hold})
    t = wait_for("a trial past an epoch", lambda: next(
        (t for t in running(sqlite_url) if t.intermediate_values), None), 120)
    cli("stop-trial", "toy", str(t.number), "--storage", sqlite_url)
    os.unlink(hold)  # the trial goes on, to see the request at its next epoch
    done = wait_for("the trial stopped", lambda: next(
        (s for s in trials(sqlite_url, "toy") if s.number == t.number
         and s.state == TrialState.FAIL), None), 30)
    assert done.user_attrs["fail_reason"] == USER_STOP
    assert done.user_attrs["tuner_state"] == "stopped"
    assert done.user_attrs["epochs_run"] < 30
    # the worker went on with another trial; the stopped one is not retried by itself
    wait_for("another trial", lambda: any(s.number > t.number for s in running(sqlite_url)), 30)
    refused("retry", "toy", "0" if t.number else "1", "--storage", sqlite_url)
    cli("retry", "toy", str(t.number), "--storage", sqlite_url)
    refused("retry", "toy", str(t.number), "--storage", sqlite_url)  # once is enough
    assert w.wait(180) == 0, w.output()
    ts = trials(sqlite_url, "toy")
    resumed = [s for s in ts if s.user_attrs.get("retry_of") == t.number]
    assert len(resumed) == 1 and resumed[0].state == TrialState.COMPLETE
    assert resumed[0].user_attrs["start_epoch"] == done.user_attrs["epochs_run"] + 1
    assert len(finished(ts)) == 4  # the retry was one trial more


def test_bad_input_is_refused_in_one_line(sqlite_url, tmp_path):
    from tuner import api

    api.run(write_study(tmp_path, trials=1, epochs=1, sleep=0), storage=sqlite_url,
            device="cpu", checkpoint_dir=str(tmp_path / "ck"), data_dir=str(tmp_path))
    engine = connect(sqlite_url).engine
    before = read_controls(engine, "toy")
    refused("extend", "toy", "--storage", sqlite_url)
    refused("extend", "toy", "--trials", "0", "--storage", sqlite_url)
    refused("extend", "toy", "--hours", "-1", "--storage", sqlite_url)
    refused("extend", "toy", "--hours", "1", "--storage", sqlite_url)  # it has no such limit
    refused("stop-trial", "toy", "0", "--storage", sqlite_url)  # complete, not running
    refused("stop-trial", "toy", "7", "--storage", sqlite_url)
    refused("retry", "toy", "0", "--storage", sqlite_url)
    refused("pause", "nope", "--storage", sqlite_url)
    assert read_controls(engine, "toy") == before
    assert len(trials(sqlite_url, "toy")) == 1


def test_time_left_agrees_with_the_study_state():
    """A trial at epoch 38 of 60 (1 s an epoch) has 22 s left, even with no trial left to
    start; a stopped study with nothing running has no estimate (status prints none)."""
    import datetime as dt

    import optuna
    from optuna.distributions import FloatDistribution

    from tuner.results.status import _eta
    from tuner.storage import BudgetState

    now = dt.datetime.now()
    running = optuna.trial.FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, values=None,
        datetime_start=now - dt.timedelta(seconds=38), datetime_complete=None,
        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs={},
        system_attrs={}, intermediate_values={e: 0.1 for e in range(1, 39)}, trial_id=1)
    eta = _eta(60, BudgetState(target=1, taken=1, deadline=None), [running], [60.0])
    assert eta == pytest.approx(22, abs=1.5)
    # two trials still to start at 60 s each, on the one running worker
    eta = _eta(60, BudgetState(target=3, taken=1, deadline=None), [running], [60.0])
    assert eta == pytest.approx(120, abs=1.5)
    stopped = BudgetState(target=3, taken=1, deadline=None, stopped=USER_STOP)
    assert _eta(60, stopped, [], [60.0]) is None
    assert _eta(60, stopped, [running], [60.0]) == pytest.approx(22, abs=1.5)


def test_a_database_made_before_the_control_tables(sqlite_url, tmp_path):
    """Readers (status, the console) read a database without tuner's control tables and
    create nothing; the first control creates them."""
    import sqlite3

    from tuner import api
    from tuner.results.console import Console

    api.run(write_study(tmp_path, trials=1, epochs=1, sleep=0), storage=sqlite_url,
            device="cpu", checkpoint_dir=str(tmp_path / "ck"), data_dir=str(tmp_path))
    path = sqlite_url.removeprefix("sqlite:///")
    tables = ("tuner_controls", "tuner_trial_stops", "tuner_workers")

    def present() -> set[str]:
        with sqlite3.connect(path) as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master")} & set(tables)

    with sqlite3.connect(path) as db:
        for t in tables:
            db.execute(f"DROP TABLE {t}")
    cli("status", "toy", "--storage", sqlite_url)
    console = Console(connect(sqlite_url, access="existing"), lambda e, s: [], token=None)
    [row] = console.studies()
    assert row["state"] == "finished" and row["counts"]["complete"] == 1
    page = console.study("toy")
    assert page is not None and page["workers"] == [] and not page["paused"]
    assert present() == set()
    cli("pause", "toy", "--storage", sqlite_url)
    assert present() == set(tables)
    assert read_controls(connect(sqlite_url).engine, "toy").paused
