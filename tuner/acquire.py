"""What a worker takes next: waiting trials first (retries, continuations, trials enqueued by
hand), then new trials while budget slots are free; and, when it finds none, whether it may
stop or must wait for other workers' trials.

Each trial comes RUNNING with its slot and its first heartbeat in one transaction, so a worker
killed at any moment leaves neither a slot without a trial nor a trial the reaper cannot see.
:class:`tuner.worker.Worker` calls these with its own patience, through outages.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tuner import storage
from tuner.study import Handle


def next_trials(handle: Handle, patience: storage.Patience, n: int) -> list[optuna.Trial]:
    """Up to ``n`` trials: waiting trials first (a retry runs in its failed trial's slot;
    a trial enqueued by hand needs a slot); then new trials while budget slots are free.
    Each comes RUNNING with its slot and its first heartbeat in one transaction
    (:func:`tuner.storage.start_trial`, :func:`tuner.storage.claim`), so a worker killed
    at any moment leaves neither a slot without a trial nor a trial the reaper cannot see;
    and so each step may be retried whole through an outage. The new trials of a fused
    group start in one transaction (:func:`tuner.storage.start_trials`) after one look
    at the waiting ones, not K of each."""
    study, budget, call = handle.study, handle.budget, patience.call
    call(handle.promote)  # ASHA: a paused trial's continuation, queued to claim below
    waiting = call(lambda: study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if waiting and call(budget.state).expired():
        return []
    trials: list[optuna.Trial] = []
    for t in waiting:
        if len(trials) == n:
            return trials
        own_slot = storage.is_retry(t) or storage.is_promotion(t)
        # a trial enqueued by hand takes a slot; with the budget spent it waits for
        # `tuner run --trials`
        if (claimed := call(lambda t=t, b=None if own_slot else budget:
                            storage.claim(study, t, b))) is not None:
            trials.append(claimed)
    if len(trials) == n:
        return trials
    return [*trials, *call(lambda: storage.start_trials(study, budget, n - len(trials)))]


def why_idle(handle: Handle, patience: storage.Patience) -> str | None:
    """Why a worker may stop now that it found no trial to run; None: wait, other
    workers' trials are still running (and would be retried here if their worker died),
    or a retry or continuation was queued meanwhile (the next loop takes it)."""
    call, study = patience.call, handle.study
    state = call(handle.budget.state)
    if state.expired():
        return "timeout"
    if call(lambda: storage.heartbeat_ages(study)):
        return None
    # read after the running trials: a reaper (this worker's heartbeat thread among them)
    # may have failed one and queued its retry since next_trials found nothing waiting,
    # and then neither read would see it (once a study ended with a retry left WAITING)
    if any(storage.is_retry(t) or storage.is_promotion(t) for t in call(
            lambda: study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))):
        return None
    if state.stopped is not None:
        return f"stopped early ({state.stopped})"
    if state.hours_spent_out:
        return f"device-time budget spent ({state.hours_spent:.3g} h)"
    return "budget spent"
