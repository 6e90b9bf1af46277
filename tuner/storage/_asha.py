"""ASHA with promotion (Li et al., "A System for Massively Parallel Hyperparameter Tuning",
MLSys 2020): a trial that reaches a rung *pauses* instead of going on or being killed.

In the Optuna study, a rung segment ends as PRUNED with the user attr ``paused_at`` (the
rung's epoch); its checkpoint (one file per lineage) is kept. Promoting it enqueues a
*continuation*: a WAITING trial with the same params, the same lineage (so the same
checkpoint), the whole learning curve so far and the user attr ``promotion_of``. Any worker
claims it with :func:`tuner.storage.claim`; it runs in no budget slot (a promotion is not a
new trial).

Who promotes what is decided from the database alone: a row in ``tuner_promotions`` per
(lineage, rung), whose primary key lets only one worker win, inserted in the same
transaction as the continuation (:func:`tuner.storage._trials.decide`): a worker that dies
or loses the database midway leaves neither, and the next worker that looks promotes the
trial itself (once, those were two transactions, and such a lineage stayed promoted and
never continued, paused for ever). The same table retires the paused trials that can never
be promoted (``trial`` = -1), so a later ``tuner run --trials`` cannot promote a trial whose
checkpoint is gone. Once the study cannot grow (budget spent, nothing running or waiting),
each rung's top 1/eta rounds up (``final``), so a study too small to fill its top rung still
finishes a trial.

Known gap: a worker that dies after the checkpoint of a rung's epoch but before its report
loses that report (as any retry does), and the retry resumes past the rung without pausing
there.

    tuner_promotions(study_name, lineage, rung PK; trial)
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

from tuner.storage._retry import LINEAGE_ATTR, lineage
from tuner.storage._trials import decide, engine_of

PAUSED_ATTR = "paused_at"  # user attr of a rung segment that paused: its rung's epoch
PROMOTION_OF_ATTR = "promotion_of"  # user attr of a continuation: the paused trial's number
RETIRED = -1  # ``trial`` of a promotion row that retires its lineage at that rung

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


def rungs(min_epochs: int, reduction_factor: int, epochs: int) -> list[int]:
    """The epochs where a trial pauses: min_epochs * eta^k below ``epochs``."""
    out, r = [], min_epochs
    while r < epochs:
        out.append(r)
        r *= reduction_factor
    return out


def is_paused(t: FrozenTrial) -> bool:
    return t.state == TrialState.PRUNED and PAUSED_ATTR in t.user_attrs


def is_promotion(t: FrozenTrial | optuna.Trial) -> bool:
    return PROMOTION_OF_ATTR in t.user_attrs


def _latest(trials: Iterable[FrozenTrial]) -> dict[int, FrozenTrial]:
    """The last trial of each lineage (its segments and retries share the lineage)."""
    out: dict[int, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        out[lineage(t)] = t
    return out


def _top(latest: dict[int, FrozenTrial], rung: int, eta: int, maximize: bool,
         final: bool = False) -> list[int]:
    """Lineages in the top 1/eta of ``rung``: of every lineage that reported at its epoch.
    ``final`` (no trial can join the rung any more): rounded up, so each rung promotes at
    least one and a small study still finishes a trial."""
    members = [(t.intermediate_values[rung], n) for n, t in latest.items()
               if rung in t.intermediate_values]
    members.sort(key=lambda m: (-m[0] if maximize else m[0], m[1]))
    k = -(-len(members) // eta) if final else len(members) // eta
    return [n for _, n in members[:k]]


def _decided(engine: sa.Engine, name: str) -> set[tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(promotions.c.lineage, promotions.c.rung)
                            .where(promotions.c.study_name == name)).all()
    return {(int(a), int(b)) for a, b in rows}


def _take(engine: sa.Engine, name: str, lin: int, rung: int, trial: int) -> bool:
    """Insert the (lineage, rung) row alone (a retirement: it enqueues nothing); False if
    another worker did first."""
    try:
        with engine.begin() as conn:
            conn.execute(promotions.insert().values(study_name=name, lineage=lin, rung=rung,
                                                    trial=trial))
    except sa_exc.IntegrityError:
        return False
    return True


def candidates(trials: list[FrozenTrial], rung_epochs: list[int], eta: int, maximize: bool,
               decided: set[tuple[int, int]], final: bool = False) -> list[FrozenTrial]:
    """Paused trials in the top 1/eta of their rung, not yet promoted or retired; the
    highest rung first (ASHA), the best first within a rung."""
    latest = _latest(trials)
    out = []
    for rung in reversed(rung_epochs):
        for n in _top(latest, rung, eta, maximize, final):
            t = latest[n]
            if is_paused(t) and t.user_attrs[PAUSED_ATTR] == rung and (n, rung) not in decided:
                out.append(t)
    return out


def _settled(trials: list[FrozenTrial]) -> bool:
    return not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def promote(study: optuna.Study, engine: sa.Engine, rung_epochs: list[int], eta: int,
            maximize: bool, final: bool = False) -> bool:
    """Enqueue the continuation of the best promotable paused trial; False if none is.
    ``final``: no new trial may start (the budget is spent); rungs round their top up,
    once nothing runs or waits."""
    name = study.study_name
    trials = study.get_trials(deepcopy=False)
    if final and not _settled(trials):
        return False
    for t in candidates(trials, rung_epochs, eta, maximize, _decided(engine, name), final):
        row = {"study_name": name, "lineage": lineage(t),
               "rung": int(t.user_attrs[PAUSED_ATTR]), "trial": t.number}
        continuation = optuna.trial.create_trial(
            state=TrialState.WAITING, params=t.params, distributions=t.distributions,
            user_attrs={LINEAGE_ATTR: lineage(t), PROMOTION_OF_ATTR: t.number},
            intermediate_values=t.intermediate_values,  # the learning curve stays whole
        )
        if decide(study, promotions, [row], [continuation], promoted=[t]):
            return True
        # else another worker promoted it a moment ago
    return False


def retire(study: optuna.Study, engine: sa.Engine, rung_epochs: list[int], eta: int,
           maximize: bool) -> list[int]:
    """Once nothing runs or waits (and no new trial may start), retire every paused trial
    that is not promotable: no trial can join its rung any more. Returns their lineages
    (whose checkpoints may go). A trial retired here is never promoted later."""
    trials = study.get_trials(deepcopy=False)
    if not _settled(trials):
        return []
    decided = _decided(engine, study.study_name)
    keep = {t.number for t in candidates(trials, rung_epochs, eta, maximize, decided, True)}
    out = []
    for n, t in _latest(trials).items():
        if not is_paused(t) or t.number in keep:
            continue
        rung = int(t.user_attrs[PAUSED_ATTR])
        if (n, rung) not in decided and _take(engine, study.study_name, n, rung, RETIRED):
            out.append(n)
    return out


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
