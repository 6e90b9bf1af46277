"""Several real worker processes on one shared database: budgets, schema races, dead and
stopped workers, `tuner status`. SQLite always; PostgreSQL and MariaDB when their URLs are
set (tests/servers.py). Trials are trivial (tests/tuner_procs.py): what is tested is the
coordination, not training."""

from __future__ import annotations

import signal
import time

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from tuner_procs import (
    assert_clean,
    finished,
    kill,
    load,
    start,
    start_together,
    start_worker,
    trials,
    tuner_cmd,
    wait_for,
    worker_args,
    worker_pid,
    write_study,
)
from typer.testing import CliRunner

from tuner.storage import Budget, normalize_url

pytest_plugins = ["servers"]

OPTUNA_TABLES = {"studies", "trials", "trial_params", "trial_values", "trial_user_attributes",
                 "trial_system_attributes", "trial_intermediate_values", "trial_heartbeats",
                 "version_info", "alembic_version"}


def check_study(url: str, name: str, budget: int) -> None:
    ts = trials(url, name)
    numbers = [t.number for t in ts]
    assert len(numbers) == len(set(numbers)), f"trial numbers repeat: {sorted(numbers)}"
    assert len(finished(ts)) == budget, [(t.number, t.state.name) for t in ts]
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.slow
def test_run_with_four_local_workers_on_sqlite(tmp_path):
    study = write_study(tmp_path, trials=5, epochs=2, sleep=0.05)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    run = start(tuner_cmd("run", str(study), "--workers", "4", "--trials", "24", "--storage", url,
                          "--device", "cpu", "--quiet"), tmp_path / "run.log")
    assert run.wait(120) == 0, run.output()
    assert_clean(run.output(), "tuner run")
    assert "24 finished" in run.output()
    check_study(url, "toy", 24)  # --trials 24 replaced the file's 5 before any started
    assert len({worker_pid(t) for t in trials(url, "toy")}) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("any_url", ["postgresql", "mysql"], indirect=True)
def test_eight_workers_start_at_once_on_an_empty_database(any_url, tmp_path):
    """Eight workers, each given the file, start at once: the first creates the study, the
    others join it, and together they spend one budget exactly."""
    study = write_study(tmp_path, trials=16, epochs=1, sleep=0.01)
    procs = start_together([worker_args(str(study), any_url, tmp_path, "--worker-index", str(i))
                            for i in range(8)], tmp_path)
    for i, p in enumerate(procs):
        assert p.wait(120) == 0, p.output()
        assert_clean(p.output(), f"worker {i}")
    check_study(any_url, "toy", 16)
    assert len({worker_pid(t) for t in trials(any_url, "toy")}) >= 2  # shared, not serial
    engine = sa.create_engine(normalize_url(any_url), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        assert OPTUNA_TABLES | {"tuner_budgets"} <= tables
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
        assert conn.exec_driver_sql("SELECT count(*) FROM version_info").scalar() == 1
        assert conn.exec_driver_sql("SELECT count(*) FROM studies").scalar() == 1
    engine.dispose()
    # one budget, set once from the file though eight workers created the study at once
    state = Budget(load(any_url, "toy")._storage._backend.engine, "toy").state()
    assert (state.target, state.taken) == (16, 16)


@pytest.mark.slow
@pytest.mark.parametrize("any_url", ["sqlite", "postgresql"], indirect=True)
def test_a_killed_workers_trial_is_retried_from_its_checkpoint(any_url, tmp_path):
    """Worker B is in the middle of a long trial when worker A is killed (-9) during its
    own: B's heartbeat thread fails A's trial within the grace period (3 s) and queues a
    retry, which B runs after its trial, continuing from A's last checkpoint."""
    study = write_study(tmp_path, trials=2, epochs=4, sleep=0.1)
    hold = tmp_path / "hold"  # B's trial stays running until the test removes it
    hold.touch()
    slow = start_worker(str(study), any_url, tmp_path, "B", "--worker-index", "1",
                        env={"FIT_HOLD": str(hold)})
    b_trial = wait_for("B's trial", lambda: next(
        (t for t in trials(any_url, "toy") if worker_pid(t) == slow.pid), None), 60)
    doomed = start_worker("toy", any_url, tmp_path, "A", env={"FIT_SLEEP": "0.5"})
    a_trial = wait_for("A's second epoch", lambda: next(
        (t for t in trials(any_url, "toy")
         if worker_pid(t) == doomed.pid and len(t.intermediate_values) >= 2), None), 60)
    kill(doomed)
    killed = time.monotonic()

    def a_retried():  # A's trial failed, and its retry queued (or already taken)
        ts = {t.number: t for t in trials(any_url, "toy")}
        retries = [t for t in ts.values() if t.user_attrs.get("retry_of") == a_trial.number]
        return (ts, retries[0]) if ts[a_trial.number].state == TrialState.FAIL and retries \
            else None

    seen, retry = wait_for("A's trial to be retried", a_retried, 15, every=0.05)
    detected = time.monotonic() - killed
    # B did not start a new trial meanwhile: its heartbeat thread found the dead trial
    assert seen[b_trial.number].state == TrialState.RUNNING
    assert detected < 3 + 2 + 1.5, f"took {detected:.1f}s"  # grace + beat and clock steps
    assert retry.params == a_trial.params
    assert retry.user_attrs["lineage"] == a_trial.number

    hold.unlink()  # B finishes its trial, then runs the retry
    assert slow.wait(60) == 0, slow.output()
    ts = {t.number: t for t in trials(any_url, "toy")}
    retry = ts[retry.number]
    assert retry.state == TrialState.COMPLETE
    done_before = len(ts[a_trial.number].intermediate_values)  # reported before the kill
    # the retry continued after the last checkpoint (saved just before each report)
    assert retry.user_attrs["start_epoch"] - 1 in (done_before, done_before + 1)
    assert retry.user_attrs["start_epoch"] >= 3
    # one curve across attempts (save comes before report: a kill between them loses a point)
    missing = {1, 2, 3, 4} - set(retry.intermediate_values)
    assert missing <= {retry.user_attrs["start_epoch"] - 1}, retry.intermediate_values
    check_study(any_url, "toy", 2)
    print(f"kill -> trial failed and retry queued: {detected:.2f}s")


@pytest.mark.slow
def test_sigterm_stops_a_worker_and_another_finishes_its_trial(tmp_path):
    study = write_study(tmp_path, trials=1, epochs=4, sleep=0.5)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    first = start_worker(str(study), url, tmp_path, "first")
    wait_for("a reported epoch", lambda: any(t.intermediate_values for t in trials(url, "toy")),
             60)
    first.popen.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    # exit code 0: a requested stop that lost nothing (the trial will be retried)
    assert first.wait(10) == 0, first.output()
    assert time.monotonic() - sent < 10
    assert_clean(first.output(), "stopped worker")
    stopped, retry = trials(url, "toy")
    assert stopped.state == TrialState.FAIL
    assert "retried from checkpoint" in stopped.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING
    assert retry.user_attrs["retry_of"] == stopped.number and retry.params == stopped.params

    resume = start(tuner_cmd("resume", "toy", "--storage", url, "--device", "cpu", "--quiet",
                             "--checkpoint-dir", str(tmp_path / "checkpoints")),
                   tmp_path / "resume.log")
    assert resume.wait(60) == 0, resume.output()
    assert_clean(resume.output(), "tuner resume")
    stopped, retry = trials(url, "toy")
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["start_epoch"] > 1  # continued, not restarted
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    check_study(url, "toy", 1)


@pytest.mark.slow
def test_status_shows_the_running_trials_and_their_workers(tmp_path):
    from tuner.cli import app

    study = write_study(tmp_path, trials=4, epochs=3, sleep=0.7)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    run = start(tuner_cmd("run", str(study), "--workers", "2", "--storage", url, "--device",
                          "cpu", "--quiet", "--heartbeat", "1"), tmp_path / "run.log")

    def busy():
        ts = trials(url, "toy")
        running = [t for t in ts if t.state == TrialState.RUNNING and t.intermediate_values]
        return running if finished(ts) and running else None

    running = wait_for("a finished trial and a running one", busy, 60)
    result = CliRunner().invoke(app, ["status", "toy", "--storage", url])
    assert result.exit_code == 0, result.output
    text = result.output
    worker = running[0].user_attrs["worker"]
    for expected in (worker["host"], str(worker["pid"]), "cpu", "s ago", "/4 finished",
                     "complete", "best mse", "estimated time left"):
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert run.wait(60) == 0, run.output()


def test_a_finished_worker_exits_promptly(tmp_path):
    """From "worker done" to the process's exit: once 3.3 s, the interpreter collecting the
    garbage of torch's import at exit; now the CLI skips that (gc.freeze)."""
    import subprocess

    study = write_study(tmp_path, trials=2, epochs=1, sleep=0.01)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    proc = subprocess.Popen(worker_args(str(study), url, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    done_at = None
    for line in proc.stdout:
        if line.startswith("worker done"):
            done_at = time.monotonic()
    assert proc.wait(60) == 0 and done_at is not None
    took = time.monotonic() - done_at
    # room for 4 test processes on 2 busy cores; the garbage collection took 3.3 s unloaded
    assert took < 2.5, f"{took:.2f} s from 'worker done' to exit"
