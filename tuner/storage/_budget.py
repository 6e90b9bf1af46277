"""Study-wide budgets, shared by every worker through the study's own database.

Optuna's ``n_trials`` counts per process and ``MaxTrialsCallback`` checks after a trial, so
in-flight trials overshoot. Here a worker takes a *slot* before it starts a new trial, with
one atomic ``UPDATE ... WHERE taken < target``: with 4 workers and a budget of 24, exactly 24
trials are started, and so exactly 24 finish. A trial that fails for good gives its slot
back; a trial retried after its worker died keeps it (the retry runs in that slot).

The table lives beside Optuna's tables in the same database:

    tuner_budgets(study_name PK, target, taken, deadline)
"""

from __future__ import annotations

import time
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
)


def create_table(engine: sa.Engine | sa.Connection) -> None:
    _metadata.create_all(engine, checkfirst=True)


@dataclass(frozen=True)
class BudgetState:
    target: int | None
    taken: int
    deadline: float | None

    @property
    def remaining(self) -> int | None:
        return None if self.target is None else max(0, self.target - self.taken)

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

    def initialize(self, trials: int | None, timeout: float | None) -> bool:
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
                .values(target=trials, deadline=deadline)
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

    def state(self) -> BudgetState:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(budgets.c.target, budgets.c.taken, budgets.c.deadline).where(self._where)
            ).first()
        return BudgetState(0, 0, None) if row is None else BudgetState(*row)

    def acquire(self) -> bool:
        """Take a slot for a new trial; False when the budget is spent or the deadline passed."""
        with self._engine.begin() as conn:
            result = conn.execute(
                budgets.update()
                .where(self._where)
                .where(sa.or_(budgets.c.target.is_(None), budgets.c.taken < budgets.c.target))
                .where(sa.or_(budgets.c.deadline.is_(None), budgets.c.deadline > time.time()))
                .values(taken=budgets.c.taken + 1)
            )
        return result.rowcount == 1

    def release(self) -> None:
        """Give back a slot (its trial failed for good and will not be retried)."""
        with self._engine.begin() as conn:
            conn.execute(
                budgets.update()
                .where(self._where)
                .where(budgets.c.taken > 0)
                .values(taken=budgets.c.taken - 1)
            )

    def delete(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(budgets.delete().where(self._where))
