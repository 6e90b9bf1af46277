"""The servers CI starts (.ci/services.sh) are what the other tests take them for."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tuner.storage import normalize_url

pytest_plugins = ["servers"]


def _hold(lock: Path, exclusive: bool) -> subprocess.Popen[str]:
    """Another process (as another xdist worker) holding the servers until its stdin closes."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from servers import servers_held\n"
            "with servers_held(sys.argv[3] == '1', Path(sys.argv[2])):\n"
            "    print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(lock),
                             "1" if exclusive else "0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def _free(path: Path, mode: int) -> bool:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_a_server_restart_waits_for_the_server_tests_and_holds_them_off(tmp_path):
    """Server tests share the servers; a test that restarts one holds them alone, and while
    it waits, new server tests wait behind it (the gate)."""
    lock = tmp_path / "servers.lock"
    gate = Path(f"{lock}.gate")
    reader = _hold(lock, exclusive=False)
    try:
        assert _free(lock, fcntl.LOCK_SH) and not _free(lock, fcntl.LOCK_EX)
        assert _free(gate, fcntl.LOCK_EX)  # a reader keeps the gate only while it enters
    finally:
        reader.communicate("")
    writer = _hold(lock, exclusive=True)
    try:
        assert not _free(lock, fcntl.LOCK_SH) and not _free(gate, fcntl.LOCK_EX)
    finally:
        writer.communicate("")
    assert _free(lock, fcntl.LOCK_EX) and _free(gate, fcntl.LOCK_EX)


@pytest.mark.pgbouncer
def test_a_plain_select_goes_through_pgbouncer_to_the_fresh_database(pgbouncer_url):
    engine = sa.create_engine(normalize_url(pgbouncer_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == \
                make_url(pgbouncer_url).database
    finally:
        engine.dispose()


@pytest.mark.pgbouncer
def test_pgbouncer_pools_by_transaction(pgbouncer_url):
    # PgBouncer's admin console (admin_users = postgres in .ci/services.sh)
    admin = make_url(pgbouncer_url).set(database="pgbouncer").render_as_string(hide_password=False)
    out = subprocess.run(["psql", admin, "-tAc", "SHOW CONFIG"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    config = {row.split("|")[0]: row.split("|")[1] for row in out.stdout.splitlines() if "|" in row}
    assert config["pool_mode"] == "transaction"
    assert int(config["max_client_conn"]) >= 64


@pytest.mark.slurm
def test_slurm_has_an_idle_node(slurm):
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T %c"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    states = [line.split()[0] for line in out.stdout.splitlines()]
    assert any(s in ("idle", "mixed", "allocated") for s in states), out.stdout
