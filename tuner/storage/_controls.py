"""What a person asked a running study to do (from ``tuner pause NAME`` or the console),
written to the study's database, so every worker, on any machine, obeys it within one
heartbeat.

    tuner_controls(study_name PK, paused, stop, at)
    tuner_trial_stops(study_name, trial PK, at)
    tuner_workers(worker PK, study_name, host, pid, device, trial, seen)

``paused``: workers stay but take no new trial (running ones go on). ``stop``: why the study
was stopped by hand; workers checkpoint their running trials at the next epoch (each is
queued again, to resume from its checkpoint), then exit. A row of ``tuner_trial_stops``:
that trial stops at its next epoch, keeps its checkpoint, and is recorded as stopped by the
user (``tuner retry`` resumes it). The study-wide budget (extend) is :mod:`._budget`'s.

Each worker checks in every heartbeat (:func:`check_in`: its row in ``tuner_workers``
updated and the controls read, one transaction), so the console sees idle and paused
workers too, and when one went silent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

_metadata = sa.MetaData()
controls = sa.Table(
    "tuner_controls",
    _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("stop", sa.String(512), nullable=True),  # why it was stopped; None: not
    sa.Column("at", sa.Double, nullable=False),  # unix time of the last change
)
trial_stops = sa.Table(
    "tuner_trial_stops",
    _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("trial", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Double, nullable=False),
)

workers = sa.Table(
    "tuner_workers",
    _metadata,
    sa.Column("worker", sa.String(256), primary_key=True),  # host:pid:random, per process
    sa.Column("study_name", sa.String(512), nullable=False, index=True),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("trial", sa.Integer, nullable=True),  # its running trial (the first of a group)
    sa.Column("seen", sa.Double, nullable=False),  # unix time of its last check-in
)

USER_STOP = "stopped by the user"


def create_table(engine: sa.Engine | sa.Connection) -> None:
    _metadata.create_all(engine, checkfirst=True)


def has_tables(conn: sa.Connection) -> bool:
    """The control tables exist: a database made before them (opened by a reader, which
    creates nothing) has none, and no control set."""
    return sa.inspect(conn).has_table(controls.name)


def _ensure(engine: sa.Engine) -> None:
    """A control's write into a database made before the control tables creates them."""
    with engine.connect() as conn:
        if has_tables(conn):
            return
    try:
        with engine.begin() as conn:
            create_table(conn)
    except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.IntegrityError):
        with engine.connect() as conn:  # another client created them a moment ago
            if not has_tables(conn):
                raise


@dataclass(frozen=True)
class Controls:
    """A study's controls as read now."""

    paused: bool = False
    stop: str | None = None
    stop_trials: frozenset[int] = frozenset()


@dataclass(frozen=True)
class WorkerRow:
    worker: str
    host: str
    pid: int
    device: str
    trial: int | None
    seen: float  # unix time


def read_controls(engine: sa.Engine, study_name: str) -> Controls:
    """The study's controls (two small reads by primary key)."""
    with engine.connect() as conn:
        return _read(conn, study_name) if has_tables(conn) else Controls()


def check_in(engine: sa.Engine, study_name: str, me: WorkerRow) -> Controls:
    """A worker's beat: its row updated (or inserted) and the study's controls read, in one
    transaction."""
    values = {"study_name": study_name, "host": me.host, "pid": me.pid, "device": me.device,
              "trial": me.trial, "seen": time.time()}
    with engine.begin() as conn:
        if not conn.execute(workers.update().where(workers.c.worker == me.worker)
                            .values(**values)).rowcount:
            conn.execute(workers.insert().values(worker=me.worker, **values))
        return _read(conn, study_name)


def check_out(engine: sa.Engine, worker: str) -> None:
    """A worker that stops cleanly leaves the list."""
    with engine.begin() as conn:
        conn.execute(workers.delete().where(workers.c.worker == worker))


def study_workers(engine: sa.Engine, study_name: str, since: float) -> list[WorkerRow]:
    """The workers of the study seen since ``since`` (unix time), the latest first."""
    c = workers.c
    with engine.connect() as conn:
        if not has_tables(conn):
            return []
        rows = conn.execute(sa.select(c.worker, c.host, c.pid, c.device, c.trial, c.seen)
                            .where(c.study_name == study_name).where(c.seen >= since)
                            .order_by(c.seen.desc())).all()
    return [WorkerRow(*r) for r in rows]


def _read(conn: sa.Connection, study_name: str) -> Controls:
    row = conn.execute(sa.select(controls.c.paused, controls.c.stop)
                       .where(controls.c.study_name == study_name)).first()
    numbers = conn.execute(sa.select(trial_stops.c.trial)
                           .where(trial_stops.c.study_name == study_name)).scalars().all()
    if row is None:
        return Controls(stop_trials=frozenset(numbers))
    return Controls(bool(row[0]), row[1], frozenset(numbers))


def _set(engine: sa.Engine, study_name: str, **values: object) -> None:
    """Update the study's row, or insert it (a first control)."""
    _ensure(engine)
    now = time.time()
    where = controls.c.study_name == study_name
    with engine.begin() as conn:
        if conn.execute(controls.update().where(where).values(at=now, **values)).rowcount:
            return
    try:
        with engine.begin() as conn:
            conn.execute(controls.insert().values(study_name=study_name, at=now,
                                                  **{"paused": False, **values}))
    except sa_exc.IntegrityError:  # another client inserted it first: update that row
        with engine.begin() as conn:
            conn.execute(controls.update().where(where).values(at=now, **values))


def set_paused(engine: sa.Engine, study_name: str, paused: bool) -> None:
    _set(engine, study_name, paused=paused)


def set_stop(engine: sa.Engine, study_name: str, why: str | None) -> None:
    """Stop the study (``why``), or lift its stop (None)."""
    _set(engine, study_name, stop=why)


def stop_trial(engine: sa.Engine, study_name: str, number: int) -> None:
    """Ask trial ``number`` to stop at its next epoch (again: no change)."""
    _ensure(engine)
    try:
        with engine.begin() as conn:
            conn.execute(trial_stops.insert().values(study_name=study_name, trial=number,
                                                     at=time.time()))
    except sa_exc.IntegrityError:
        pass  # asked already


def forget_trial_stop(engine: sa.Engine, study_name: str, number: int) -> None:
    """The trial stopped (or will not run again): its request is done."""
    with engine.begin() as conn:
        conn.execute(trial_stops.delete().where(trial_stops.c.study_name == study_name)
                     .where(trial_stops.c.trial == number))


def delete_controls(engine: sa.Engine, study_name: str) -> None:
    with engine.begin() as conn:
        if not has_tables(conn):
            return
        conn.execute(controls.delete().where(controls.c.study_name == study_name))
        conn.execute(trial_stops.delete().where(trial_stops.c.study_name == study_name))
        conn.execute(workers.delete().where(workers.c.study_name == study_name))
