"""Study-wide budgets, shared by every worker through the study's own database.

Optuna's ``n_trials`` counts per process and ``MaxTrialsCallback`` checks after a trial, so
in-flight trials overshoot. Here a worker takes a *slot* before it starts a new trial, with
one atomic ``UPDATE ... WHERE taken < target``: with 4 workers and a budget of 24, exactly 24
trials are started, and so exactly 24 finish. A trial that fails for good gives its slot
back; a trial retried after its worker died keeps it (the retry runs in that slot).

The table lives beside Optuna's tables in the same database:

    tuner_budgets(study_name PK, target, taken, deadline, seconds_target, seconds_spent, stopped)

Two more study-wide limits live in the same row, checked by the same ``acquire``:
device-seconds (``--budget-hours``: the training time of finished trials, summed over every
worker and added with one ``UPDATE ... SET seconds_spent = seconds_spent + :s``), and an
early stop (``stop: {patience: N}`` or the terminator): the first worker to see that the
study should stop writes why into ``stopped``, and no worker, now or joining later, takes a
slot after that.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

_metadata = sa.MetaData()
budgets = sa.Table(
    "tuner_budgets",
    _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("target", sa.Integer, nullable=True),  # None: no limit on trials
    sa.Column("taken", sa.Integer, nullable=False, default=0),
    # unix time after which no trial starts (DOUBLE: MySQL's FLOAT is 4 bytes, minutes off)
    sa.Column("deadline", sa.Double, nullable=True),
    # device-seconds the study may spend (None: no limit) and has spent
    sa.Column("seconds_target", sa.Double, nullable=True),
    sa.Column("seconds_spent", sa.Double, nullable=False, default=0.0, server_default="0"),
    # why the study stopped early (patience, terminator); None while it goes on
    sa.Column("stopped", sa.String(512), nullable=True),
)
# columns added after the first release: databases created before them get them on connect
_ADDED = ("seconds_target", "seconds_spent", "stopped")


def create_table(engine: sa.Engine | sa.Connection) -> None:
    """Create the table, or add the columns an older tuner did not have (under the schema
    lock that :func:`tuner.storage.connect` holds)."""
    _metadata.create_all(engine, checkfirst=True)
    have = {c["name"] for c in sa.inspect(engine).get_columns("tuner_budgets")}
    for name in _ADDED:
        if name in have:
            continue
        col = budgets.c[name]
        ddl = col.type.compile(dialect=engine.dialect)
        default = " DEFAULT 0 NOT NULL" if name == "seconds_spent" else ""
        with engine.begin() if isinstance(engine, sa.Engine) else nullcontext(engine) as conn:
            conn.execute(sa.text(f"ALTER TABLE tuner_budgets ADD COLUMN {name} {ddl}{default}"))


@dataclass(frozen=True)
class BudgetState:
    target: int | None
    taken: int
    deadline: float | None
    seconds_target: float | None = None
    seconds_spent: float = 0.0
    stopped: str | None = None  # why the study stopped early

    @property
    def remaining(self) -> int | None:
        return None if self.target is None else max(0, self.target - self.taken)

    @property
    def hours_spent(self) -> float:
        return self.seconds_spent / 3600

    @property
    def hours_left(self) -> float | None:
        if self.seconds_target is None:
            return None
        return max(0.0, self.seconds_target - self.seconds_spent) / 3600

    @property
    def hours_spent_out(self) -> bool:
        """The device-time budget is spent: no new trial starts."""
        return self.seconds_target is not None and self.seconds_spent >= self.seconds_target

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.time()) >= self.deadline


class Budget:
    """The budget row of one study."""

    def __init__(self, engine: sa.Engine, study_name: str):
        self._engine = engine
        self._name = study_name
        self._where = budgets.c.study_name == study_name

    def ensure(self) -> None:
        """Create the row (no limit yet) unless it exists."""
        with self._engine.connect() as conn:
            if conn.execute(sa.select(budgets.c.taken).where(self._where)).first() is not None:
                return
        try:
            with self._engine.begin() as conn:
                conn.execute(budgets.insert().values(study_name=self._name, target=0, taken=0))
        except sa_exc.IntegrityError:
            pass  # another worker created it first (its transaction is rolled back whole)

    def initialize(self, trials: int | None, timeout: float | None,
                   hours: float | None = None) -> bool:
        """Give a new study its first budget, unless another worker has already done so or
        taken a slot (the check and the update are one statement). Returns whether it did."""
        self.ensure()
        deadline = None if timeout is None else time.time() + timeout
        with self._engine.begin() as conn:
            result = conn.execute(
                budgets.update()
                .where(self._where)
                .where(budgets.c.target == 0)
                .where(budgets.c.taken == 0)
                .values(target=trials, deadline=deadline,
                        seconds_target=None if hours is None else hours * 3600)
            )
        return result.rowcount == 1

    def add(self, trials: int | None, timeout: float | None) -> BudgetState:
        """Allow ``trials`` more trials from now on (``None``: no limit), and set the
        study's deadline to ``timeout`` seconds from now (``None``: keep none)."""
        self.ensure()
        target = sa.null() if trials is None else budgets.c.taken + trials
        deadline = None if timeout is None else time.time() + timeout
        with self._engine.begin() as conn:
            conn.execute(
                budgets.update().where(self._where).values(target=target, deadline=deadline)
            )
        return self.state()

    def set_deadline(self, timeout: float | None) -> BudgetState:
        """Set the study's deadline to ``timeout`` seconds from now (``None``: none), and
        keep its trial limit as it is."""
        self.ensure()
        deadline = None if timeout is None else time.time() + timeout
        with self._engine.begin() as conn:
            conn.execute(budgets.update().where(self._where).values(deadline=deadline))
        return self.state()

    def add_hours(self, hours: float) -> BudgetState:
        """Allow ``hours`` more device-hours from what the study has spent so far."""
        self.ensure()
        with self._engine.begin() as conn:
            conn.execute(budgets.update().where(self._where).values(
                seconds_target=budgets.c.seconds_spent + hours * 3600))
        return self.state()

    def extend(self, trials: int | None = None, seconds: float | None = None,
               hours: float | None = None) -> BudgetState:
        """Raise the limits the study has (one UPDATE): ``trials`` more than its trial limit
        (or than it has taken, if more), its deadline ``seconds`` later (from now, if it has
        passed), ``hours`` more device-hours (beyond what it spent, if more). A limit the
        study does not have stays absent: there is nothing to extend."""
        self.ensure()
        c, now = budgets.c, time.time()

        def later(col: sa.ColumnElement, floor: sa.ColumnElement | float, by: float
                  ) -> sa.ColumnElement:
            return sa.case((col.is_(None), None), (col < floor, floor + by), else_=col + by)

        values: dict[str, object] = {}
        if trials is not None:
            values["target"] = later(c.target, c.taken, trials)
        if seconds is not None:
            values["deadline"] = later(c.deadline, now, seconds)
        if hours is not None:
            values["seconds_target"] = later(c.seconds_target, c.seconds_spent, hours * 3600)
        if values:
            with self._engine.begin() as conn:
                conn.execute(budgets.update().where(self._where).values(**values))
        return self.state()

    def grow(self) -> None:
        """One slot more, taken at once (a failed trial retried by hand: its own slot was
        given back when it failed); a study without a trial limit only takes it."""
        self.ensure()
        c = budgets.c
        with self._engine.begin() as conn:
            conn.execute(budgets.update().where(self._where).values(
                taken=c.taken + 1, target=sa.case((c.target.is_(None), None),
                                                  else_=c.target + 1)))

    def spend(self, seconds: float) -> None:
        """Add a finished trial's device time (one atomic UPDATE: workers finish at once)."""
        with self._engine.begin() as conn:
            conn.execute(self.spend_statement(seconds))

    def spend_statement(self, seconds: float) -> sa.Update:
        """:meth:`spend` as one statement, for a caller that spends in the same transaction
        as the trial's result (:func:`tuner.storage.tell_many`)."""
        return budgets.update().where(self._where).values(
            seconds_spent=budgets.c.seconds_spent + max(0.0, seconds))

    def stop(self, why: str) -> bool:
        """Stop the study early: no slot is taken after this, by any worker. Only the first
        reason is kept; returns whether this call set it."""
        with self._engine.begin() as conn:
            result = conn.execute(budgets.update().where(self._where)
                                  .where(budgets.c.stopped.is_(None)).values(stopped=why))
        return result.rowcount == 1

    def unstop(self) -> None:
        """Let a study that stopped early go on (more budget was asked for explicitly)."""
        with self._engine.begin() as conn:
            conn.execute(budgets.update().where(self._where).values(stopped=None))

    def state(self) -> BudgetState:
        c = budgets.c
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(c.target, c.taken, c.deadline, c.seconds_target, c.seconds_spent,
                          c.stopped).where(self._where)
            ).first()
        return BudgetState(0, 0, None) if row is None else BudgetState(
            row[0], row[1], row[2], row[3], row[4] or 0.0, row[5])

    def acquire(self) -> bool:
        """Take a slot for a new trial; False when the budget (trials or device-hours) is spent,
        the deadline passed or the study stopped early."""
        with self._engine.begin() as conn:
            return conn.execute(self.acquire_statement()).rowcount == 1

    def acquire_statement(self) -> sa.Update:
        """:meth:`acquire` as one statement (it took a slot if it updated a row), for a caller
        that takes the slot in the same transaction as the trial it is for
        (:func:`tuner.storage.start_trial`, :func:`tuner.storage.claim`)."""
        return (
            budgets.update()
            .where(self._where)
            .where(sa.or_(budgets.c.target.is_(None), budgets.c.taken < budgets.c.target))
            .where(sa.or_(budgets.c.deadline.is_(None), budgets.c.deadline > time.time()))
            .where(sa.or_(budgets.c.seconds_target.is_(None),
                          budgets.c.seconds_spent < budgets.c.seconds_target))
            .where(budgets.c.stopped.is_(None))
            .values(taken=budgets.c.taken + 1)
        )

    def release(self) -> None:
        """Give back a slot (its trial failed for good and will not be retried)."""
        with self._engine.begin() as conn:
            conn.execute(self.release_statement())

    def release_statement(self) -> sa.Update:
        """:meth:`release` as one statement, for a caller's own transaction."""
        return (budgets.update().where(self._where).where(budgets.c.taken > 0)
                .values(taken=budgets.c.taken - 1))

    def delete(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(budgets.delete().where(self._where))
