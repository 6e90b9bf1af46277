"""A trial's epoch reports -> its Optuna trial, held through database outages
(:class:`TrialReporter`): the ``reporter`` of every :class:`~tuner.training.context.Context` the runner
builds."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from tuner import storage
from tuner.trials.failures import finished_elsewhere

if TYPE_CHECKING:
    from tuner.trials.fused import GroupReports


class TrialReporter:
    """Context reports -> the Optuna trial (and the worker's progress callback).

    While the database is unreachable, reports are held and training goes on (no pruning);
    the next report that reaches the database writes the held ones first, in order. Past
    the worker's patience, a report raises :class:`DatabaseUnreachable` (the training loop
    saved its checkpoint before reporting, so the trial resumes elsewhere)."""

    def __init__(self, trial: optuna.Trial, stop: threading.Event,
                 on_epoch: Callable[[int, int, float], None] | None, prune: bool = True,
                 primary: tuple[int, str] | None = None,
                 patience: storage.Patience | None = None,
                 asked: Callable[[int], bool] | None = None):
        self.trial, self._stop, self.on_epoch, self._prune = trial, stop, on_epoch, prune
        # whether a person asked this trial to stop (tuner stop-trial)
        self._asked = asked or (lambda n: False)
        # (index, direction) of the pruned-on objective of a multi-objective study, whose
        # curve tuner records and judges itself: Optuna's report/should_prune refuse there
        self._primary = primary
        self.patience = patience or storage.Patience(300, 0)
        self.held: list[tuple[int, float]] = []
        # a fused group's reports, written together (context.report_together); None: alone
        self.together: GroupReports | None = None

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        """Write the report; True: prune. Raises :class:`FinishedElsewhere` when the trial
        was finished from outside meanwhile."""
        try:
            return self._report(epoch, value)
        except UpdateFinishedTrialError as e:
            self.held.clear()
            raise finished_elsewhere(self.trial, e) from e

    def _report(self, epoch: int, value: float) -> bool:
        if self.on_epoch:
            self.on_epoch(self.trial.number, epoch, value)
        if not self._prune:
            return False
        if self._primary is not None:
            if not math.isfinite(value):
                return False
            storage.report_primary(self.trial, epoch, value)
            index, direction = self._primary
            return storage.should_prune_primary(self.trial, index, direction,
                                                self.trial.study.pruner)
        if math.isfinite(value):
            self.held.append((epoch, value))
        if not self._write_held(wait=False):
            if self.patience.exhausted():
                raise self.patience.error()
            return False
        ok, prune = self.patience.attempt(self.trial.should_prune)
        return bool(prune) if ok else False

    def joins_a_group(self) -> bool:
        """Whether this trial's reports may be written with other members' (GroupReports):
        a pruned-on, single-objective curve, written by Optuna's own report."""
        return self._prune and self._primary is None

    def _write_held(self, wait: bool) -> bool:
        """Write the held reports in order; ``wait``: retrying through an outage (up to the
        patience), else stopping at the first that does not reach the database."""
        while self.held:
            epoch, value = self.held[0]
            def write(value: float = value, epoch: int = epoch) -> None:
                self.trial.report(value, epoch)

            if wait:
                self.patience.call(write)
            elif not self.patience.attempt(write)[0]:
                return False
            self.held.pop(0)
        return True

    def flush(self) -> None:
        """Write every held report (end of the trial, before its result is told); a trial
        finished from outside meanwhile takes none."""
        try:
            self._write_held(wait=True)
        except UpdateFinishedTrialError:
            self.held.clear()

    def stop_requested(self) -> bool:
        return self._stop.is_set() or self._asked(self.trial.number)
