"""The servers CI starts (.ci/services.sh) are what the other tests take them for."""

from __future__ import annotations

import subprocess

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tuner.storage import normalize_url

pytest_plugins = ["servers"]


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
