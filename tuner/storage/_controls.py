"""What a person asked a running study to do (from ``tuner pause NAME`` or the console),
written to the study's database, so every worker, on any machine, obeys it within one
heartbeat.

    tuner_controls(study_name PK, paused, stop, at)
    tuner_trial_stops(study_name, trial PK, at)

``paused``: workers stay but take no new trial (running ones go on). ``stop``: why the study
was stopped by hand; workers checkpoint their running trials at the next epoch (each is
queued again, to resume from its checkpoint), then exit. A row of ``tuner_trial_stops``:
that trial stops at its next epoch, keeps its checkpoint, and is recorded as stopped by the
user (``tuner retry`` resumes it). The study-wide budget (extend) is :mod:`._budget`'s.
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

USER_STOP = "stopped by the user"
# user attr of a trial: what tuner did with it, in a word (stopped, paused, promoted, ...),
# for optuna-dashboard's trial table
STATE_ATTR = "tuner_state"


def create_table(engine: sa.Engine | sa.Connection) -> None:
    _metadata.create_all(engine, checkfirst=True)


@dataclass(frozen=True)
class Controls:
    """A study's controls as read now."""

    paused: bool = False
    stop: str | None = None
    stop_trials: frozenset[int] = frozenset()


def read_controls(engine: sa.Engine, study_name: str) -> Controls:
    """The study's controls (two small reads by primary key)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(controls.c.paused, controls.c.stop)
                           .where(controls.c.study_name == study_name)).first()
        numbers = conn.execute(sa.select(trial_stops.c.trial)
                               .where(trial_stops.c.study_name == study_name)).scalars().all()
    if row is None:
        return Controls(stop_trials=frozenset(numbers))
    return Controls(bool(row[0]), row[1], frozenset(numbers))


def _set(engine: sa.Engine, study_name: str, **values: object) -> None:
    """Update the study's row, or insert it (a first control)."""
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
        conn.execute(controls.delete().where(controls.c.study_name == study_name))
        conn.execute(trial_stops.delete().where(trial_stops.c.study_name == study_name))
