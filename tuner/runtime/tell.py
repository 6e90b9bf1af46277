"""How a worker tells its trials' outcomes: a fused group's members in one transaction; then
a stopped trial's retry queued, or a failed trial's budget slot given back; a trial finished
from outside while it ran (optuna-dashboard's "Fail trial") left to the study.

:class:`tuner.runtime.worker.Worker` calls :func:`tell_group` with its own patience, through outages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from tuner import storage
from tuner.study import Handle
from tuner.trial_schema import RETRY_OF_ATTR

if TYPE_CHECKING:
    from tuner.trials import Outcome

log = logging.getLogger("tuner")


def tell_group(handle: Handle, patience: storage.Patience, trials: list[optuna.Trial],
               outcomes: list[Outcome], spent: float | None = None) -> list[bool]:
    """Record each outcome with the closing attrs it carries, and ``spent`` seconds of
    device time on the study's budget; False for a trial that had been finished by another
    worker (its heartbeat went silent for a grace period, so it was failed and retried
    there). One transaction for all (:func:`tuner.storage.tell_many`): a fused group's
    members are told together, and a lone trial's result, attrs and spend are one write."""
    told = patience.call(lambda: storage.tell_many(handle.study, [
        (t, None, o.values or o.value) if o.state == TrialState.COMPLETE
        else (t, o.state, None) for t, o in zip(trials, outcomes, strict=True)],
        attrs=[(o.attrs or {}, o.system_attrs or {}) for o in outcomes],
        also=[handle.budget.spend_statement(spent)] if spent is not None else []))
    for t, outcome, ok in zip(trials, outcomes, told, strict=True):
        if ok:
            _after_tell(handle, patience, t, outcome)
        elif outcome.elsewhere:
            _after_elsewhere(handle, patience, t, outcome)
        else:
            log.warning("trial %d was failed and retried by another worker meanwhile",
                        t.number)
    return told


def _after_elsewhere(handle: Handle, patience: storage.Patience, trial: optuna.Trial,
                     outcome: Outcome) -> None:
    """A trial finished from outside while it ran (optuna-dashboard's "Fail trial",
    another process's tell): stopped here, the study goes on. Failed there and not
    retried by a reaper, its budget slot goes back, as any failed trial's does."""
    log.info("%s", outcome.fail_reason)
    study, call = handle.study, patience.call
    if outcome.state != TrialState.FAIL:
        return
    if not any(t.user_attrs.get(RETRY_OF_ATTR) == trial.number
               for t in call(lambda: study.get_trials(deepcopy=False))):
        call(handle.budget.release)


def _after_tell(handle: Handle, patience: storage.Patience, trial: optuna.Trial,
                outcome: Outcome) -> None:
    """A failed trial: its retry queued (stopped, so nothing is lost), or its slot given
    back."""
    study, call = handle.study, patience.call
    if outcome.state == TrialState.FAIL:
        if outcome.interrupted:
            call(lambda: storage.retry(study, storage.refreshed(trial), handle.budget,
                                       crashed=False))
        else:
            call(handle.budget.release)
        if outcome.stopped_by_user:  # done as asked; `tuner retry` resumes it
            call(lambda: storage.forget_trial_stop(storage.engine_of(study),
                                                   handle.name, trial.number))
