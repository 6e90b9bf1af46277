"""Opening a storage: URLs -> Optuna's RDB storage, safe for many workers at once.

- SQLite (the default, ``sqlite:///tuner.db``): WAL journal, a long busy timeout, so a few
  local workers share one file without "database is locked".
- PostgreSQL (``postgresql://`` uses psycopg) and MySQL/MariaDB (``mysql://`` uses PyMySQL):
  bounded pools with pre-ping. The schema is created under a server-side lock, so many
  workers starting at once on an empty database all succeed.
- Heartbeats on every running trial: a trial whose worker died is failed after
  ``grace_period`` seconds and retried (see ``tuner.runtime.worker``).
"""

from __future__ import annotations

import functools
import random
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import optuna
import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from tuner.errors import NoDatabase, StorageError
from tuner.settings import CHECKPOINT_FOLDER, Heartbeat
from tuner.storage._lean import LeanWrites

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
    """Parse a storage URL, choosing the drivers tuner ships (psycopg, PyMySQL). Only the
    text is checked here (nothing is opened): scheme, port, database name, no control
    characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise StorageError(f"storage URL {url!r} holds a control character (a newline?); "
                           f"give it on one line, {EXAMPLES}")
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
    if backend != "sqlite" and parsed.port is not None and not 0 < parsed.port < 65536:
        raise StorageError(f"port {parsed.port} of {display_url(url)} is not a TCP port; give "
                           f"1 to 65535, {EXAMPLES}")
    if backend != "sqlite" and not parsed.database:
        raise StorageError(f"{display_url(url)} names no database; add its name after the host, "
                           f"{EXAMPLES}")
    if backend == "sqlite" and parsed.query:
        raise StorageError(f"{display_url(url)}: SQLite URLs take no ?options (tuner sets its "
                           "own); drop everything from the '?'")
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
    from tuner.storage import _controls as controls
    from tuner.storage import _lease as lease
    from tuner.storage import _ledger as ledger
    from tuner.storage._rdb import create_schema

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
                controls.create_table(conn)
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


# what a reader needs to find in a database: Optuna's own tables (tuner's sit beside them)
OPTUNA_TABLES = ("studies", "trials", "version_info")
Access = Literal["write", "existing", "read"]


class TunerStorage(LeanWrites):
    """Optuna's RDB storage as tuner opens it, a report one transaction with its heartbeat
    (:class:`~tuner.storage._lean.LeanWrites`). It pickles: Optuna drops the engine and
    makes a new one when it is unpickled; this puts tuner's SQLite hooks back on the new
    engine."""

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        _hook(self)


def _hook(storage: optuna.storages.RDBStorage) -> None:
    """tuner's SQLite pragmas and write-locking BEGIN, on a writable SQLite storage."""
    if storage.engine.dialect.name != "sqlite" or "creator" in storage.engine_kwargs:
        return  # a server, or a read-only SQLite file (see ``_readonly_sqlite``)
    sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
    sqlalchemy.event.listen(storage.engine, "begin", _sqlite_begin)
    storage.engine.dispose()


def _readonly_sqlite(path: str) -> Any:
    """A connection that can only read the SQLite file ``path`` (``mode=ro``): it creates no
    missing file, sets no journal mode and never checkpoints. Module-level, and bound with
    ``functools.partial``, so the storage pickles."""
    import sqlite3
    from urllib.parse import quote

    return sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=60,
                           check_same_thread=False)


def _tables(parsed: URL) -> set[str]:
    """The tables of the database at ``parsed``, read without creating or changing anything.
    Raises StorageError when a SQLite file is missing or is not a database."""
    if parsed.get_backend_name() == "sqlite":
        path = Path(str(parsed.database)).expanduser()
        if not path.is_file():
            raise NoDatabase(f"no study database at {path}; check --storage, or create one "
                               "with `tuner run FILE`")
        # through SQLite only: opening and closing the file ourselves would drop every
        # SQLite lock this process holds on it (POSIX locks are per process and file)
        import sqlite3

        try:
            conn = _readonly_sqlite(str(path.resolve()))
            try:
                rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e):
                raise StorageError(f"{path} is not a SQLite database; check --storage") from e
            raise StorageError(f"{path} is not a readable SQLite database ({e}); check "
                               "--storage") from e
        return {r[0] for r in rows}
    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=_connect_args(parsed))
    try:  # an unreachable server raises, and connect's loop waits for it
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _check_existing(parsed: URL) -> None:
    """A reader's storage must hold studies already: nothing is created for it."""
    missing = [t for t in OPTUNA_TABLES if t not in _tables(parsed)]
    if missing:
        shown = display_url(parsed.render_as_string(hide_password=False))
        raise StorageError(f"{shown} holds no studies (no Optuna tables: {', '.join(missing)}); "
                           "check --storage, or create a study there with `tuner run FILE`")


def connect(url: str, heartbeat: Heartbeat | None = None,
            wait: float = 5.0, *, access: Access = "write") -> optuna.storages.RDBStorage:
    """Open the storage at ``url``, waiting up to ``wait`` seconds for a server that is
    unreachable (restarting). Trials whose worker stops beating are failed and retried
    (``tuner.retry``). The storage pickles (:class:`TunerStorage`).

    ``access``: ``"write"`` (``run``, ``resume``, ``worker``, ``delete``) creates the schema
    if needed; ``"existing"`` (the dashboard, whose buttons write trials) and ``"read"``
    (``status``, ``trials``, ``best``, ``studies``, ``report``, ``--from-storage``) first
    check that the database holds Optuna's tables, creating or changing nothing (a missing
    or foreign SQLite file is a StorageError and is left as it was); ``"read"`` also opens a
    SQLite file read-only."""
    from tuner.storage._rdb import check_schema_version
    from tuner.storage._retry import StaleTrialHandler

    parsed = normalize_url(url)
    _check_pool_mode(url, parsed)  # before anything is written
    hb = heartbeat or Heartbeat()
    last: Exception | None = None
    deadline = time.monotonic() + wait
    kwargs = _engine_kwargs(parsed)
    if access == "read" and parsed.get_backend_name() == "sqlite":
        path = str(Path(str(parsed.database)).expanduser().resolve())
        kwargs = {"creator": functools.partial(_readonly_sqlite, path)}
    for attempt in range(1000):
        try:
            if access == "write":
                _create_schema(parsed)
            else:
                _check_existing(parsed)
            with warnings.catch_warnings():
                # heartbeats are "experimental" in Optuna: nothing a user could act on
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = TunerStorage(
                    parsed.render_as_string(hide_password=False),
                    engine_kwargs=kwargs,
                    heartbeat_interval=hb.interval,
                    grace_period=hb.grace_period,
                    heartbeat_stale_trial_callback=StaleTrialHandler(),
                    skip_table_creation=True,  # done above, on one connection
                    skip_compatibility_check=True,  # done below, one connection at a time
                )
                check_schema_version(storage)
            _hook(storage)
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


def same_database(a: str, b: str) -> bool:
    """Whether the storage URLs ``a`` and ``b`` name one database, however spelled: one
    SQLite file (relative or absolute, through links), or one server (host names resolved,
    default ports filled in) and database."""
    import socket

    ua, ub = normalize_url(a), normalize_url(b)
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    if ua.get_backend_name() == "sqlite":
        pa, pb = (Path(str(u.database)).expanduser() for u in (ua, ub))
        try:
            return pa.samefile(pb)
        except OSError:
            return pa.resolve() == pb.resolve()
    port = {"postgresql": 5432}.get(ua.get_backend_name(), 3306)

    def addresses(host: str | None) -> set[str]:
        try:
            return {i[4][0] for i in socket.getaddrinfo(host or "localhost", None)}
        except OSError:
            return {host or "localhost"}

    return ((ua.port or port) == (ub.port or port) and ua.database == ub.database
            and bool(addresses(ua.host) & addresses(ub.host)))


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """Whether ``storage`` holds a study named ``name`` (only reads)."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True
