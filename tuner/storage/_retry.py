"""Retrying a trial whose worker died or was stopped: same params, same lineage, continuing
from the lineage's last per-epoch checkpoint.

Follows Optuna's ``RetryHeartbeatStaleTrialCallback`` conventions (system attrs
``failed_trial`` and ``retry_history``), but carries over only tuner's lineage rather than
every user attr of the failed attempt, and hands the study-wide budget slot to the retry.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.schedules import PBT_ATTR
from tuner.storage._budget import Budget
from tuner.trial_schema import (
    CRASHES_ATTR,
    FAILED_TRIAL_ATTR,
    LINEAGE_ATTR,
    RETRY_HISTORY_ATTR,
    RETRY_OF_ATTR,
    lineage,
)

MAX_RETRIES = 3  # retries of a trial whose worker died


def is_retry(trial: FrozenTrial | optuna.Trial) -> bool:
    return RETRY_OF_ATTR in trial.user_attrs


def retry(study: optuna.Study, trial: FrozenTrial, budget: Budget, *,
          crashed: bool = True) -> bool:
    """Enqueue a retry of the failed ``trial``; it inherits the trial's budget slot. Returns
    whether it retried.

    A trial whose worker died ``MAX_RETRIES`` times already (the trial itself may be what
    kills it, e.g. out of memory) is not retried again: its slot goes back to the budget. A
    graceful stop (``crashed=False``: SIGTERM, Ctrl-C) does not count."""
    template = retry_template(trial, crashed=crashed)
    if template is None:
        budget.release()
        return False
    study.add_trial(template)
    return True


def retry_template(trial: FrozenTrial, *, crashed: bool = True) -> FrozenTrial | None:
    """The WAITING trial that retries the failed ``trial`` (same params, lineage and learning
    curve), or None once its lineage lost its worker ``MAX_RETRIES`` times."""
    history = [*trial.system_attrs.get(RETRY_HISTORY_ATTR, []), trial.number]
    crashes = int(trial.system_attrs.get(CRASHES_ATTR, 0)) + int(crashed)
    if crashes > MAX_RETRIES:
        return None
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs={LINEAGE_ATTR: lineage(trial), RETRY_OF_ATTR: trial.number,
                    **({PBT_ATTR: trial.user_attrs[PBT_ATTR]}
                       if PBT_ATTR in trial.user_attrs else {})},
        system_attrs={FAILED_TRIAL_ATTR: history[0], RETRY_HISTORY_ATTR: history,
                      CRASHES_ATTR: crashes},
        # the learning curve continues where the checkpoint left it
        intermediate_values=trial.intermediate_values,
    )


class StaleTrialHandler:
    """Optuna's heartbeat-stale callback: a trial whose worker stopped beating is retried.

    It holds nothing: the study it is called with leads to its engine, so the storage that
    holds it pickles (multiprocessing with spawn, joblib, Dask, Ray)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from tuner.storage._rdb import engine_of

        log = optuna.logging.get_logger("tuner")
        if retry(study, trial, Budget(engine_of(study), study.study_name)):
            log.warning("trial %d of %s lost its worker (no heartbeat); retrying it",
                        trial.number, study.study_name)
        else:
            log.warning("trial %d of %s lost its worker %d times; not retrying it again",
                        trial.number, study.study_name, MAX_RETRIES + 1)
