"""Opening a storage: URLs -> Optuna's RDB storage, safe for many workers at once.

- SQLite (the default, ``sqlite:///tuner.db``): WAL journal, a long busy timeout, so a few
  local workers share one file without "database is locked".
- PostgreSQL (``postgresql://`` uses psycopg) and MySQL/MariaDB (``mysql://`` uses PyMySQL):
  bounded pools with pre-ping. The schema is created under a server-side lock, so many
  workers starting at once on an empty database all succeed.
- Heartbeats on every running trial: a trial whose worker died is failed after
  ``grace_period`` seconds and retried (see ``tuner.worker``).
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from tuner.errors import StorageError
from tuner.settings import CHECKPOINT_FOLDER, Heartbeat

EXAMPLES = "e.g. sqlite:///tuner.db or postgresql://user@host:5432/db"
_SCHEMA_LOCK = 0x7475_6E65  # "tune": the advisory-lock key for schema creation
# ``postgresql://...?pgbouncer=transaction``: the URL says it reaches PgBouncer in that pool
# mode, and tuner checks it on PgBouncer's admin console before it writes anything
POOL_MODE_OPTION = "pgbouncer"


def _check_pool_mode(url: str, parsed: URL) -> None:
    claimed = make_url(url).query.get(POOL_MODE_OPTION)
    if claimed is None:
        return
    import psycopg

    shown = display_url(url)
    admin = parsed.set(drivername="postgresql", database="pgbouncer")
    try:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True,
                             connect_timeout=10, cursor_factory=psycopg.ClientCursor) as conn:
            config = dict((row[0], row[1]) for row in conn.execute("SHOW CONFIG").fetchall())
    except psycopg.Error as e:
        raise StorageError(
            f"{shown} claims PgBouncer ({POOL_MODE_OPTION}={claimed}) but its admin console "
            f"(database pgbouncer) does not answer: {str(e).strip().splitlines()[0]}; add the "
            f"user to admin_users or stats_users, or drop ?{POOL_MODE_OPTION}=") from e
    mode = config.get("pool_mode")
    if mode != claimed:
        raise StorageError(
            f"{shown} claims PgBouncer in {claimed} pooling but it runs in {mode} mode; set "
            f"pool_mode = {claimed} in pgbouncer.ini, or fix ?{POOL_MODE_OPTION}=")


def normalize_url(url: str) -> URL:
    """Parse a storage URL, choosing the drivers tuner ships (psycopg, PyMySQL)."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError) as e:
        raise StorageError(
            f"malformed storage URL {url!r}; use a SQLAlchemy URL, {EXAMPLES}") from e
    backend = parsed.get_backend_name()
    if POOL_MODE_OPTION in parsed.query:  # tuner's own option (see ``_check_pool_mode``)
        if backend != "postgresql":
            raise StorageError(f"?{POOL_MODE_OPTION}= is for PostgreSQL behind PgBouncer; drop it "
                               f"from {display_url(url)}")
        parsed = parsed.difference_update_query([POOL_MODE_OPTION])
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend in ("mysql", "mariadb") and "+" not in parsed.drivername:
        parsed = parsed.set(drivername="mysql+pymysql")
    elif backend not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise StorageError(
            f"unsupported storage {backend!r}; use SQLite, PostgreSQL or MySQL, {EXAMPLES}")
    if backend == "sqlite":
        db = parsed.database
        if not db or db == ":memory:":
            raise StorageError("an in-memory SQLite storage keeps nothing; give a file, e.g. sqlite:///tuner.db")
        if not Path(db).expanduser().resolve().parent.is_dir():
            raise StorageError(f"folder of {db} does not exist; create it or fix the storage URL")
    return parsed


def checkpoint_folder(url: str, given: str | Path | None = None) -> str:
    """``given``, else ``tuner_checkpoints`` beside a SQLite file (so workers sharing the
    file share the checkpoints), else ``./tuner_checkpoints``."""
    if given is not None:
        return str(given)
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return str(Path(parsed.database).expanduser().resolve().parent / CHECKPOINT_FOLDER)
    return CHECKPOINT_FOLDER


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url


def _connect_args(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        # wait up to 60 s for another worker's write instead of "database is locked"
        return {"timeout": 60}
    if url.get_backend_name() == "postgresql":
        # no server-side prepared statements: behind PgBouncer in transaction pooling the next
        # transaction may run on another server connection, which never saw them
        return {"prepare_threshold": None, "connect_timeout": 10}
    return {"connect_timeout": 10}


def _engine_kwargs(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": _connect_args(url)}
    # one connection per process: the trial loop and the heartbeat thread take turns on it
    # (each holds it for one short transaction), so connections = workers + launchers
    return {"pool_size": 1, "max_overflow": 0, "pool_timeout": 120, "pool_pre_ping": True,
            "pool_recycle": 3600, "connect_args": _connect_args(url)}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # the driver's own transaction handling starts a transaction only at the first write, so
    # Optuna's read-check-write steps (pop a waiting trial, fail a stale one) were not atomic
    # across processes: two workers could both take the same retry. Take over BEGIN instead.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, far fewer fsyncs per commit
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_begin(conn: sqlalchemy.Connection) -> None:
    # IMMEDIATE: take the write lock when the transaction starts (waiting up to the busy
    # timeout), so a read followed by a write in one transaction sees no other writer between
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _create_schema(url: URL) -> None:
    """Create Optuna's tables and tuner's, serialized across processes, on one short-lived
    connection (closed before the storage opens its own). PostgreSQL: a transaction-scoped
    advisory lock, and DDL inside the same transaction, which PgBouncer's transaction
    pooling keeps on one server connection. MySQL: a named lock (no pooler in between)."""
    from tuner.storage import _budget as budget
    from tuner.storage import _lease as lease
    from tuner.storage import _ledger as ledger
    from tuner.storage._trials import create_schema

    backend = url.get_backend_name()
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=_connect_args(url))
    if backend == "sqlite":
        sqlalchemy.event.listen(engine, "connect", _sqlite_pragmas)
        sqlalchemy.event.listen(engine, "begin", _sqlite_begin)
    try:
        with engine.begin() as conn:
            if backend == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": _SCHEMA_LOCK})
            elif backend != "sqlite":
                conn.execute(sqlalchemy.text("SELECT GET_LOCK('tuner_schema', 120)"))
            try:
                create_schema(conn)
                budget.create_table(conn)
                lease.create_table(conn)
                ledger.create_table(conn)
            finally:
                if backend not in ("sqlite", "postgresql"):
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK('tuner_schema')"))
    finally:
        engine.dispose()


def _transient(err: Exception) -> bool:
    """A server that is down or restarting (worth waiting for), not a wrong URL, user or
    password (not worth it)."""
    text = str(getattr(err, "orig", err)).lower()
    refused = ("authentication", "password", "does not exist", "unknown database",
               "access denied", "could not translate host", "name or service not known")
    return not any(r in text for r in refused)


def _unreachable(url: str, err: Exception) -> StorageError:
    detail = str(getattr(err, "orig", err)).strip().splitlines()
    reason = detail[0] if detail else type(err).__name__
    return StorageError(
        f"cannot open storage {display_url(url)}: {reason}; check the URL and that the server runs"
    )


def connect(url: str, heartbeat: Heartbeat | None = None,
            wait: float = 5.0) -> optuna.storages.RDBStorage:
    """Open (creating the schema if needed) the storage at ``url``, waiting up to ``wait``
    seconds for a server that is unreachable (restarting). Trials whose worker stops
    beating are failed and retried (``tuner.retry``)."""
    from tuner.storage._retry import StaleTrialHandler
    from tuner.storage._trials import check_schema_version

    parsed = normalize_url(url)
    _check_pool_mode(url, parsed)  # before anything is written
    hb = heartbeat or Heartbeat()
    on_stale = StaleTrialHandler()
    last: Exception | None = None
    deadline = time.monotonic() + wait
    for attempt in range(1000):
        try:
            _create_schema(parsed)
            with warnings.catch_warnings():
                # heartbeats are "experimental" in Optuna: nothing a user could act on
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    parsed.render_as_string(hide_password=False),
                    engine_kwargs=_engine_kwargs(parsed),
                    heartbeat_interval=hb.interval,
                    grace_period=hb.grace_period,
                    heartbeat_stale_trial_callback=on_stale,
                    skip_table_creation=True,  # done above, on one connection
                    skip_compatibility_check=True,  # done below, one connection at a time
                )
                check_schema_version(storage)
            on_stale.engine = storage.engine
            if parsed.get_backend_name() == "sqlite":
                sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
                sqlalchemy.event.listen(storage.engine, "begin", _sqlite_begin)
                storage.engine.dispose()
            return storage
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as e:
            last = e
            if "locked" not in str(e) and "already exists" not in str(e):
                if time.monotonic() >= deadline or not _transient(e):
                    raise _unreachable(url, e) from e
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError) as e:
            last = e  # another process created the same table a moment ago: try again
        except sa_exc.ArgumentError as e:
            raise StorageError(f"bad storage URL {display_url(url)}: {e}; {EXAMPLES}") from e
        except ImportError as e:
            raise StorageError(
                f"no database driver for {display_url(url)} ({e}); pip install it") from e
        except RuntimeError as e:  # optuna: schema of an incompatible version
            raise StorageError(f"{display_url(url)}: {e}".splitlines()[0]) from e
        if attempt >= 8 and time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, 0.2 * (attempt + 1)) * (1 + random.random()))
    raise _unreachable(url, last or RuntimeError("schema creation kept failing")) from last
