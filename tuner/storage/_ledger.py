"""The decisions ledger: what the schedules (:mod:`tuner.schedules`) decided when a worker
asked for work, so that each decision is taken once, by one worker, from the database alone.

One row per (lineage, rung): an ASHA promotion of a paused trial (``trial`` its number), the
retirement of a paused trial that can never be promoted (``trial`` = ``RETIRED``), a PBT
generation (``lineage`` = -1) and each of its members. A :class:`~tuner.schedules.Decision`
is recorded whole or not at all: its rows and its continuations (WAITING trials, in no
budget slot) in one transaction (:func:`tuner.storage._trials.decide`), whose primary key
lets only one worker win. A worker that dies or loses the database midway leaves neither,
and the next worker that looks decides again (once, those were two transactions, and such a
lineage stayed promoted and never continued, paused for ever).

    tuner_promotions(study_name, lineage, rung PK; trial)
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from tuner.schedules import (
    PAUSED_ATTR,
    PBT_ATTR,
    PROMOTION_OF_ATTR,
    RETIRED,
    Continuation,
    Decision,
    is_paused,
)
from tuner.storage._rdb import engine_of
from tuner.storage._trials import decide
from tuner.trial_schema import LINEAGE_ATTR, lineage

_metadata = sa.MetaData()
promotions = sa.Table(
    "tuner_promotions",
    _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("lineage", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("rung", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("trial", sa.Integer, nullable=False),  # the paused trial, or RETIRED
)


def create_table(engine: sa.Engine | sa.Connection) -> None:
    _metadata.create_all(engine, checkfirst=True)


def decided(study: optuna.Study) -> set[tuple[int, int]]:
    """The (lineage, rung) rows of the study's ledger."""
    with engine_of(study).connect() as conn:
        rows = conn.execute(sa.select(promotions.c.lineage, promotions.c.rung)
                            .where(promotions.c.study_name == study.study_name)).all()
    return {(int(a), int(b)) for a, b in rows}


def _trial(c: Continuation) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=TrialState.WAITING, params=dict(c.params), distributions=dict(c.distributions),
        user_attrs={LINEAGE_ATTR: c.lineage, PROMOTION_OF_ATTR: c.of,
                    **({PBT_ATTR: dict(c.record)} if c.record is not None else {})},
        intermediate_values=dict(c.curve),  # the learning curve stays whole
    )


def record(study: optuna.Study, decision: Decision) -> bool:
    """Insert the decision's rows with its continuations in one transaction; False if
    another worker had decided one of the rows (nothing is written then)."""
    rows = [{"study_name": study.study_name, "lineage": lin, "rung": rung, "trial": trial}
            for lin, rung, trial in decision.rows]
    # optuna-dashboard shows which paused trials went on (an ASHA rung's or a PBT generation's)
    return decide(study, promotions, rows, [_trial(c) for c in decision.continuations],
                  promoted=[c.of for c in decision.continuations])


def record_first(study: optuna.Study, decisions: Iterable[Decision]) -> Decision | None:
    """Record the first of ``decisions`` (best first) that no other worker took; None if
    there was none to take."""
    for d in decisions:
        if record(study, d):
            return d
    return None


def retired(study: optuna.Study) -> set[int]:
    """Numbers of the paused trials retired for good (never to be promoted)."""
    try:
        engine = engine_of(study)
    except TypeError:  # not in a database: nothing was retired
        return set()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(promotions.c.lineage, promotions.c.rung)
                            .where(promotions.c.study_name == study.study_name)
                            .where(promotions.c.trial == RETIRED)).all()
    gone = {(int(a), int(b)) for a, b in rows}
    return {t.number for t in study.get_trials(deepcopy=False)
            if is_paused(t) and (lineage(t), t.user_attrs[PAUSED_ATTR]) in gone}
