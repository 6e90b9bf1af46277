"""What one trial came to (:class:`Outcome`), and the two signals that end a trial before any
training: :class:`Repeat` (dedup reused an earlier result) and :class:`Infeasible` (a
constraint known before training rejects it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState

from tuner.errors import TunerError
from tuner.training.context import CheckpointStore


@dataclass(frozen=True)
class Outcome:
    state: TrialState
    value: float | None = None
    fail_reason: str | None = None
    interrupted: bool = False  # stopped by SIGTERM/Ctrl-C: keep its checkpoint, retry it
    checkpoints: tuple[CheckpointStore, ...] = ()
    # every objective's value, in the study's order (``value`` is the reported metric's)
    values: tuple[float, ...] | None = None
    # a CUDA device-side assert: this process's GPU context is broken, the worker must exit
    broken_device: bool = False
    # the number of the finished trial whose result this one reused (dedup): nothing trained
    repeat_of: int | None = None
    # ASHA: the trial reached a rung and waits for a promotion; its checkpoint stays
    paused: bool = False
    # why this worker must stop after the trial (its retry queued, as for ``interrupted``)
    error: TunerError | None = None
    # the trial was finished from outside while it ran (optuna-dashboard's "Fail trial",
    # another process's tell): its worker stopped it and told nothing; ``state`` is the one
    # it was given there
    elsewhere: bool = False
    # stopped at an epoch because a person asked (``tuner stop-trial``): its checkpoint stays,
    # and ``tuner retry`` resumes it
    stopped_by_user: bool = False
    # the closing user attrs and system attrs (the train-loss curve) the runner has not
    # written: the worker's tell writes them with the result, in one transaction
    attrs: Mapping[str, Any] | None = None
    system_attrs: Mapping[str, Any] | None = None


class Repeat(Exception):  # noqa: N818 - a control-flow signal, like TrialPruned
    """The configuration already finished in this study: its result is reused."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.fail_reason or "repeat")
        self.outcome = outcome


class Infeasible(Exception):  # noqa: N818 - a control-flow signal, like TrialPruned
    """A constraint known before training (params, size_mb) rejects the configuration."""
