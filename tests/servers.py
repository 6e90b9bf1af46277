"""Servers for tests: each test gets a fresh, empty database, dropped afterwards.

A pytest plugin (``pytest_plugins = ["servers"]`` in a test module). The servers are named by
environment variables, which CI sets (.ci/run, .ci/services.sh); tests that need one skip
when it is unset:

    TUNER_TEST_POSTGRES_URL   e.g. postgresql://postgres@127.0.0.1:5432/test
    TUNER_TEST_MYSQL_URL      e.g. mysql://root@127.0.0.1:3306/test
    TUNER_TEST_PGBOUNCER_URL  e.g. postgresql://postgres@127.0.0.1:6432/test, PgBouncer in
                              transaction pooling mode in front of TUNER_TEST_POSTGRES_URL's
                              server, passing any database name through (``* = host=...``)
    TUNER_TEST_SLURM          set (to 1) where ``sbatch`` submits to a working Slurm cluster

The URL's database is only used to connect and create ``tuner_test_<random>``.

Tests run in parallel (pytest-xdist), so the servers are shared: a test that stops or
restarts a server (``@pytest.mark.restarts_servers``) holds them alone, the others share
them (:func:`servers_held`).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tuner.storage import normalize_url

ENV = {"postgresql": "TUNER_TEST_POSTGRES_URL", "mysql": "TUNER_TEST_MYSQL_URL",
       "pgbouncer": "TUNER_TEST_PGBOUNCER_URL"}
SLURM_ENV = "TUNER_TEST_SLURM"


# in the system's temp folder: every pytest process on this machine (xdist workers, another
# run beside this one) sees the same lock
LOCK = Path(tempfile.gettempdir()) / "tuner-test-servers.lock"
_held = [0]  # how many of this process's fixtures hold the lock (they nest)


@contextmanager
def servers_held(exclusive: bool, lock_path: Path = LOCK) -> Iterator[None]:
    """A reader/writer lock over the test servers, across processes: ``exclusive`` for a test
    that stops a server, shared for the others. A waiting exclusive holder goes before new
    shared ones (they pass through ``LOCK.gate`` one at a time, and it holds the gate while
    it waits), so a restart test is not starved by a stream of server tests."""
    if _held[0]:
        _held[0] += 1
        try:
            yield
        finally:
            _held[0] -= 1
        return
    with open(f"{lock_path}.gate", "a") as gate, open(lock_path, "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)
        _held[0] = 1
        try:
            yield
        finally:
            _held[0] = 0
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


def _exclusive(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("restarts_servers") is not None


def server_url(backend: str) -> str | None:
    return os.environ.get(ENV[backend]) or None


def _admin_engine(url: str) -> sa.Engine:
    # CREATE/DROP DATABASE cannot run inside a transaction
    return sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT",
                            poolclass=sa.pool.NullPool)


def fresh_database(base_url: str) -> Iterator[str]:
    """Create an empty database on the server of ``base_url``; yield its URL; drop it."""
    name = f"tuner_test_{secrets.token_hex(6)}"
    engine = _admin_engine(base_url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as e:
        pytest.fail(f"cannot create a test database on {base_url}: {e.orig}")
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        postgres = engine.dialect.name == "postgresql"
        with engine.connect() as conn:
            # FORCE: a killed worker's connection may linger a moment on the server
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}"
                                 + (" WITH (FORCE)" if postgres else ""))
        engine.dispose()


def _fresh(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    base = server_url(backend)
    if base is None:
        pytest.skip(f"set {ENV[backend]} to run tests on {backend}")
    with servers_held(_exclusive(request)):
        yield from fresh_database(base)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new, empty PostgreSQL database."""
    yield from _fresh("postgresql", request)


@pytest.fixture
def mysql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new, empty MySQL/MariaDB database."""
    yield from _fresh("mysql", request)


@pytest.fixture
def pgbouncer_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL, through PgBouncer, of a new, empty database made directly on the PostgreSQL
    behind it (PgBouncer cannot run CREATE/DROP DATABASE for a database it is pooling)."""
    bouncer, postgres = server_url("pgbouncer"), server_url("postgresql")
    if bouncer is None:
        pytest.skip(f"set {ENV['pgbouncer']} to run tests through PgBouncer")
    if postgres is None:
        pytest.skip(f"set {ENV['postgresql']} too: {ENV['pgbouncer']}'s databases are made there")
    with servers_held(_exclusive(request)):
        for direct in fresh_database(postgres):
            yield make_url(bouncer).set(database=make_url(direct).database).render_as_string(
                hide_password=False)


@pytest.fixture
def slurm() -> None:
    """Skip unless ``sbatch`` submits to a working Slurm cluster here."""
    if not os.environ.get(SLURM_ENV):
        pytest.skip(f"set {SLURM_ENV}=1 where sbatch reaches a Slurm cluster (.ci/run does)")
    if shutil.which("sbatch") is None:
        pytest.fail(f"{SLURM_ENV} is set but sbatch is not on PATH; run .ci/services.sh")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """URL of a new SQLite file."""
    return f"sqlite:///{tmp_path / 'tuner.db'}"


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def any_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """Each backend in turn: SQLite always, the servers when their URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tuner.db'}"
    else:
        yield from _fresh(request.param, request)
