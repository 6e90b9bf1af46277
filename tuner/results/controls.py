"""Steering a running study: what ``tuner stop / pause / continue / extend / stop-trial /
retry`` and the console's buttons do, the same functions for both. Each checks its input
first (a :class:`~tuner.errors.TunerError` naming the fix, nothing written), then writes the
request to the study's database (:mod:`tuner.storage`); every worker obeys within one
heartbeat.

    stop(handle)                  no new trials; running ones checkpoint and are queued again
    pause(handle) / go_on(handle) workers stay and take nothing new / take trials again
    extend(handle, trials=10)     more trials, time or device-hours
    stop_trial(handle, 7)         trial 7 stops at its next epoch, resumable
    retry(handle, 7)              a failed (or stopped) trial runs again from its checkpoint
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from tuner import storage
from tuner.errors import TunerError
from tuner.storage import BudgetState
from tuner.study import Handle
from tuner.trial_schema import RETRY_OF_ATTR

__all__ = ["Extension", "extend", "go_on", "pause", "retry", "stop", "stop_trial"]


def stop(handle: Handle) -> None:
    """Stop the study: no trial starts; running trials stop at their next epoch with their
    checkpoints, queued to resume (``tuner continue NAME``, then ``tuner resume NAME``);
    workers exit 0."""
    engine = storage.engine_of(handle.study)
    storage.set_stop(engine, handle.name, storage.USER_STOP)
    handle.budget.stop(storage.USER_STOP)


def pause(handle: Handle) -> None:
    """Workers stay but take no new trial; running trials go on."""
    storage.set_paused(storage.engine_of(handle.study), handle.name, True)


def go_on(handle: Handle) -> None:
    """Undo a pause, or a stop: workers take trials again (after a stop, start them with
    ``tuner resume NAME``)."""
    engine = storage.engine_of(handle.study)
    storage.set_paused(engine, handle.name, False)
    if storage.read_controls(engine, handle.name).stop is not None:
        storage.set_stop(engine, handle.name, None)
    if handle.budget.state().stopped == storage.USER_STOP:
        handle.budget.unstop()


@dataclass(frozen=True)
class Extension:
    """How much more a study may spend; each None: that limit stays."""

    trials: int | None = None
    seconds: float | None = None
    hours: float | None = None

    def __post_init__(self) -> None:
        if self.trials is None and self.seconds is None and self.hours is None:
            raise TunerError("say how much to extend by: --trials N, --minutes M or --hours H")
        if self.trials is not None and self.trials < 1:
            raise TunerError(f"--trials must be at least 1 (got {self.trials})")
        for name, v in (("--minutes", self.seconds), ("--hours", self.hours)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise TunerError(f"{name} must be a positive number (got {v})")


def extend(handle: Handle, ext: Extension) -> BudgetState:
    """Raise the study's limits by ``ext`` (a limit it does not have stays absent: say so).
    A study that stopped early by its ``stop:`` rule goes on; one stopped by hand does not
    (``tuner continue`` does that)."""
    b = handle.budget.state()
    missing = [flag for flag, asked, has in (
        ("--trials", ext.trials, b.target), ("--minutes", ext.seconds, b.deadline),
        ("--hours", ext.hours, b.seconds_target)) if asked is not None and has is None]
    if missing:
        raise TunerError(f"study {handle.name!r} has no limit for {', '.join(missing)} to "
                         "extend; leave it out (that budget is unlimited already)")
    state = handle.budget.extend(ext.trials, ext.seconds, ext.hours)
    if state.stopped is not None and state.stopped != storage.USER_STOP:
        handle.budget.unstop()
        state = handle.budget.state()
    return state


def _trial(handle: Handle, number: int) -> FrozenTrial:
    t = storage.trial_by_number(handle.study, number) if number >= 0 else None
    if t is None:
        raise TunerError(f"study {handle.name!r} has no trial {number}; `tuner trials "
                         f"{handle.name}` lists them")
    return t


def stop_trial(handle: Handle, number: int) -> None:
    """Trial ``number`` stops at its next epoch, keeps its checkpoint, and is recorded as
    stopped by the user (``tuner retry`` resumes it)."""
    t = _trial(handle, number)
    if t.state != TrialState.RUNNING:
        raise TunerError(f"trial {number} of {handle.name!r} is not running (it is "
                         f"{t.state.name.lower()}); only a running trial can be stopped")
    storage.stop_trial(storage.engine_of(handle.study), handle.name, number)


def retry(handle: Handle, number: int) -> None:
    """Run the failed (or stopped) trial ``number`` again, with its params, from its
    checkpoint when it has one, as one more trial of the budget."""
    t = _trial(handle, number)
    if t.state != TrialState.FAIL:
        raise TunerError(f"trial {number} of {handle.name!r} is {t.state.name.lower()}, not "
                         "failed; only a failed or stopped trial can be retried")
    study = handle.study
    again = [o.number for o in study.get_trials(deepcopy=False)
             if o.user_attrs.get(RETRY_OF_ATTR) == number]
    if again:
        raise TunerError(f"trial {number} of {handle.name!r} was retried already (trial "
                         f"{again[-1]}); retry that one if it failed")
    template = storage.retry_template(t, crashed=False)
    if template is None:
        raise TunerError(f"trial {number} of {handle.name!r} lost its worker "
                         f"{storage.MAX_RETRIES} times (out of memory?); it is not retried again")
    handle.budget.grow()
    study.add_trial(template)
