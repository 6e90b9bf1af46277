"""Scaling out (issue 12): one database connection per worker, PgBouncer in transaction
pooling, and riding out a database restart. Against the real servers (tests/servers.py):
connections are counted in pg_stat_activity / information_schema.processlist while a real
`tuner run --workers 2` works, and PostgreSQL itself is restarted mid-study."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from tuner_procs import (
    FINISHED,
    assert_clean,
    finished,
    start,
    start_worker,
    trials,
    tuner_cmd,
    wait_for,
    worker_pid,
    write_study,
)
from typer.testing import CliRunner

from tuner.storage import normalize_url

pytest_plugins = ["servers"]


def check_study(url: str, name: str, budget: int) -> None:
    ts = trials(url, name)
    numbers = [t.number for t in ts]
    assert len(numbers) == len(set(numbers)), f"trial numbers repeat: {sorted(numbers)}"
    assert len(finished(ts)) == budget, [(t.number, t.state.name) for t in ts]
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING,
                                              TrialState.FAIL)], [
        (t.number, t.state.name) for t in ts]


class ConnectionSampler(threading.Thread):
    """Counts, every 50 ms, the server connections to the test's database (its own aside)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        parsed = normalize_url(url)
        self.db = parsed.database
        self.engine = sa.create_engine(parsed.set(database="postgres") if
                                       parsed.get_backend_name() == "postgresql" else parsed,
                                       poolclass=sa.pool.NullPool)
        self.postgres = parsed.get_backend_name() == "postgresql"
        self.counts: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        q = ("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
             if self.postgres else
             "SELECT count(*) FROM information_schema.processlist WHERE db = :db "
             "AND id <> CONNECTION_ID()")
        with self.engine.connect() as conn:
            while not self.halt.wait(0.05):
                self.counts.append(conn.execute(sa.text(q), {"db": self.db}).scalar_one())
                conn.rollback()  # a fresh snapshot of pg_stat_activity each time

    def stop(self) -> list[int]:
        self.halt.set()
        self.join()
        self.engine.dispose()
        return self.counts


def run_args(study, url: str, tmp_path, *extra: str) -> list[str]:
    return tuner_cmd("run", str(study), "--storage", url, "--device", "cpu", "--quiet",
                     "--checkpoint-dir", str(tmp_path / "ckpt"), "--data-dir", str(tmp_path),
                     "--heartbeat", "1", "--grace-period", "4", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("any_url", ["postgresql", "mysql"], indirect=True)
def test_run_with_two_workers_holds_at_most_three_connections(any_url, tmp_path):
    study = write_study(tmp_path, trials=10, epochs=3, sleep=0.1)
    sampler = ConnectionSampler(any_url)
    sampler.start()
    run = start(run_args(study, any_url, tmp_path, "--workers", "2"), tmp_path / "run.log")
    assert run.wait(120) == 0, run.output()
    counts = sampler.stop()
    assert_clean(run.output(), "tuner run")
    check_study(any_url, "toy", 10)
    # connections = workers + launchers: 2 workers (heartbeat included) and the parent
    assert max(counts) <= 3, f"connections sampled: max {max(counts)}, {counts}"
    assert max(counts) >= 2, counts  # the sampler saw the workers at all


@pytest.mark.slow
def test_four_workers_through_pgbouncer_in_transaction_mode(pgbouncer_url, tmp_path):
    study = write_study(tmp_path, trials=16, epochs=3, sleep=0.05)
    # the first worker creates the schema and the study through PgBouncer, racing the others
    procs = [start_worker(str(study), pgbouncer_url, tmp_path, f"worker{i}", "--worker-index",
                          str(i)) for i in range(4)]
    for i, p in enumerate(procs):
        assert p.wait(120) == 0, p.output()
        assert_clean(p.output(), f"worker {i}")
    check_study(pgbouncer_url, "toy", 16)
    assert len({worker_pid(t) for t in trials(pgbouncer_url, "toy")}) >= 2
    # and the read commands, through the same pooler
    res = CliRunner().invoke(__import__("tuner.cli", fromlist=["app"]).app,
                             ["status", "toy", "--storage", pgbouncer_url])
    assert res.exit_code == 0, res.output


def postgres(action: str) -> None:
    cluster = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True,
                             check=True).stdout.split()[0]
    subprocess.run(["pg_ctlcluster", cluster, "main", action], check=True, timeout=60)
    if action != "stop":
        subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-t", "30"], check=False)


def mariadb(action: str) -> None:
    """Stop or start the local MariaDB as .ci/run starts it."""
    if action == "stop":
        subprocess.run(["mariadb-admin", "-h", "127.0.0.1", "-u", "root", "shutdown"],
                       check=True, timeout=60)
        return
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec",
                    "/usr/sbin/mariadbd"], check=True, timeout=60)
    wait_for("MariaDB", lambda: subprocess.run(
        ["mariadb-admin", "-h", "127.0.0.1", "-u", "root", "status"],
        capture_output=True).returncode == 0, 60, 0.5)


@contextmanager
def server_down(backend: str, seconds: float) -> Iterator[None]:
    """The local PostgreSQL or MariaDB stopped for ``seconds`` (and always started again)."""
    control = postgres if backend == "postgresql" else mariadb
    control("stop")
    try:
        time.sleep(seconds)
        yield
    finally:
        control("start")


def wait_mid_trial(url: str, workers: int) -> None:
    wait_for(f"{workers} workers in the middle of a trial", lambda: len({
        worker_pid(t) for t in trials(url, "toy")
        if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 1}) >= workers, 60, 0.3)


@pytest.mark.slow
@pytest.mark.restarts_servers
@pytest.mark.parametrize("any_url", ["postgresql", "mysql"], indirect=True)
def test_a_database_restart_mid_study_fails_no_trial(any_url, tmp_path):
    # a trial more for each worker after the outage (it holds every server test back)
    study = write_study(tmp_path, trials=4, epochs=6, sleep=0.5)
    run = start(run_args(study, any_url, tmp_path, "--workers", "2"), tmp_path / "run.log")
    wait_mid_trial(any_url, 2)
    # down for twice the grace period (4 s): every running trial's heartbeat is older than
    # the grace when it is back, yet their workers are alive
    with server_down(normalize_url(any_url).get_backend_name(), 8):
        pass
    assert run.wait(150) == 0, run.output()
    assert "database back" in run.output()  # the outage was seen and ridden out
    check_study(any_url, "toy", 4)
    for t in trials(any_url, "toy"):  # every curve complete, in order, none repeated
        assert sorted(t.intermediate_values) == list(range(1, 7)), (t.number, t.intermediate_values)


@pytest.mark.slow
@pytest.mark.restarts_servers
def test_an_outage_past_the_patience_stops_workers_and_resume_finishes(postgres_url, tmp_path):
    study = write_study(tmp_path, trials=4, epochs=6, sleep=0.5)
    run = start(run_args(study, postgres_url, tmp_path, "--workers", "2", "--db-patience", "3"),
                tmp_path / "run.log")
    wait_mid_trial(postgres_url, 2)
    with server_down("postgresql", 2):
        assert run.wait(60) != 0, run.output()  # both workers gave up while it was down
    out = run.output()
    assert out.count("the database was unreachable for") == 2, out
    assert "Traceback" not in out, out
    resume = start(tuner_cmd("resume", "toy", "--storage", postgres_url, "--device", "cpu",
                             "--quiet", "--checkpoint-dir", str(tmp_path / "ckpt"),
                             "--heartbeat", "1", "--grace-period", "4", "--workers", "2"),
                   tmp_path / "resume.log")
    assert resume.wait(150) == 0, resume.output()
    ts = trials(postgres_url, "toy")
    assert len(finished(ts)) == 4, [(t.number, t.state.name) for t in ts]
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # the two trials the outage interrupted were retried from their checkpoints
    retried = [t for t in ts if "retry_of" in t.user_attrs and t.state in FINISHED]
    assert len(retried) == 2 and all(t.user_attrs["start_epoch"] > 1 for t in retried), [
        (t.number, t.user_attrs) for t in retried]


def test_read_commands_say_the_database_is_unreachable(tmp_path):
    from tuner.cli import app

    url = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens on port 1
    for args in (["studies"], ["status", "x"], ["trials", "x"], ["best", "x"]):
        t0 = time.monotonic()
        res = CliRunner().invoke(app, [*args, "--storage", url])
        assert res.exit_code == 2, res.output
        assert "cannot open storage" in res.output and len(res.output.strip().splitlines()) == 1
        assert time.monotonic() - t0 < 15


def test_db_patience_below_the_heartbeat_is_refused(tmp_path):
    from tuner.cli import app

    study = write_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    res = CliRunner().invoke(app, ["run", str(study), "--storage", url, "--heartbeat", "5",
                                   "--db-patience", "2"])
    assert res.exit_code == 2, res.output
    assert "--db-patience 2 is below the heartbeat interval" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "tuner.db").exists()


def test_schema_is_created_through_pgbouncer_with_no_session_lock(pgbouncer_url):
    from tuner.storage import connect

    storage = connect(pgbouncer_url)
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM tuner_budgets")).scalar_one() == 0
    assert make_url(pgbouncer_url).port == 6432
    storage.engine.dispose()


@pytest.fixture
def session_pgbouncer(postgres_url) -> Iterator[str]:
    """A second PgBouncer, in SESSION pooling, on a free port of 127.0.0.1 in front of the
    local PostgreSQL; yields the URL of ``postgres_url``'s database through it."""
    import shutil
    import socket
    import tempfile

    if shutil.which("pgbouncer") is None:
        pytest.skip("pgbouncer is not installed (.ci/services.sh installs it)")
    folder = Path(tempfile.mkdtemp(prefix="tuner-pgbouncer-"))
    shutil.chown(folder, "postgres", "postgres")
    folder.chmod(0o755)
    (folder / "users.txt").write_text('"postgres" ""\n')
    with socket.socket() as s:  # a port no other test run on this machine holds
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "pgbouncer.ini"
    conf.write_text(f"""[databases]
* = host=127.0.0.1 port=5432
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / 'users.txt'}
admin_users = postgres
pool_mode = session
ignore_startup_parameters = extra_float_digits,options
logfile = {folder / 'pgbouncer.log'}
pidfile = {folder / 'pgbouncer.pid'}
""")
    subprocess.run(["pgbouncer", "-d", "-u", "postgres", str(conf)], check=True, timeout=30)
    try:
        wait_for("session-mode pgbouncer", lambda: (folder / "pgbouncer.pid").exists(), 20)
        time.sleep(0.5)
        yield make_url(postgres_url).set(port=port).render_as_string(hide_password=False)
    finally:
        pid = int((folder / "pgbouncer.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_url_claiming_transaction_pooling_of_a_session_pgbouncer_is_refused(
        session_pgbouncer, postgres_url, tmp_path):
    from tuner.cli import app

    study = write_study(tmp_path)
    url = session_pgbouncer + "?pgbouncer=transaction"
    res = CliRunner().invoke(app, ["run", str(study), "--storage", url, "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "runs in session mode; set pool_mode = transaction" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    engine = sa.create_engine(normalize_url(postgres_url), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:  # nothing written: not even the schema
        assert not sa.inspect(conn).get_table_names()
    engine.dispose()


def test_a_url_claiming_transaction_pooling_of_pgbouncer_in_that_mode_works(pgbouncer_url):
    from tuner.storage import connect

    connect(pgbouncer_url + "?pgbouncer=transaction").engine.dispose()


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_one_reaper_at_a_time_through_a_lease(any_url):
    from tuner.storage import Lease, connect

    engine = connect(any_url).engine
    a, b = Lease(engine, "reaper:toy", 1.0), Lease(engine, "reaper:toy", 1.0)
    assert a.take() and a.take()  # taken, then renewed
    assert not b.take()  # held by a live holder
    time.sleep(1.2)  # a stopped renewing (died): it expires and passes on
    assert b.take() and not a.take()
    b.release()  # a clean stop hands it over at once
    assert a.take()
    engine.dispose()
