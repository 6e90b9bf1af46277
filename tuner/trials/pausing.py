"""A pruned trial's end, as its schedule decides (:meth:`~tuner.schedules.Schedule.verdict`):
stopped for good, or paused at a rung's (generation's) epoch with its checkpoint kept, for a
later decision to continue it (ASHA's promotion, PBT's next generation)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tuner import schedules, storage
from tuner.errors import CheckpointUnwritable
from tuner.training.context import Context, TrialPruned
from tuner.trial_schema import PAUSED_ATTR
from tuner.trials import snapshots
from tuner.trials.checkpoints import Checkpoints
from tuner.trials.failures import fail_reason
from tuner.trials.outcome import Outcome


def pruned(trial: optuna.Trial, ctxs: list[Context], e: TrialPruned,
           schedule: schedules.Schedule, files: Checkpoints,
           patience: storage.Patience) -> Outcome:
    """PRUNED; where the schedule says PAUSE (a finite report at a rung's epoch) the trial is
    marked ``paused_at`` instead, its checkpoint kept, and snapshotted as of that epoch when
    the schedule snapshots there (PBT: for members that exploit it)."""
    last = ctxs[-1].history[-1] if ctxs and ctxs[-1].history else None
    lin = storage.lineage(trial)
    if last is None or schedule.verdict(lin, int(last["epoch"]), last["value"],
                                        pruned=True) != schedules.Verdict.PAUSE:
        return Outcome(TrialState.PRUNED, fail_reason=str(e))
    epoch = int(last["epoch"])
    if epoch in schedule.snapshot_epochs(lin):
        try:
            snapshots.keep(files, lin, epoch)
        except (ValueError, CheckpointUnwritable) as err:
            return Outcome(TrialState.FAIL, fail_reason=fail_reason(err))
    patience.call(lambda: storage.set_user_attrs(trial, {PAUSED_ATTR: epoch}))
    return Outcome(TrialState.PRUNED, fail_reason=f"paused at rung epoch {epoch}", paused=True)
