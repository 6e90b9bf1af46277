"""Snapshots of a lineage's checkpoint as of an epoch, and segments that start from another
lineage's snapshot (PBT's exploit). The runner comes here only when the study's schedule
says so, through its interface (:meth:`~tuner.schedules.Schedule.snapshot_epochs`,
:meth:`~tuner.schedules.Schedule.weights_from`): a trial of any other schedule never does."""

from __future__ import annotations

import optuna

from tuner.trials.checkpoints import Checkpoints


def keep(files: Checkpoints, lineage: int, epoch: int) -> None:
    """Keep the lineage's checkpoint as of ``epoch`` apart (it goes on, and may overwrite
    its own file, before a member that exploits it copies the weights)."""
    state = files.of(lineage).load()
    if state is None or int(state.get("epoch", -1)) != epoch:
        raise ValueError(
            f"trial-{lineage}'s checkpoint is not at epoch {epoch}, where PBT pauses it; a "
            "trainer must save its checkpoint (with its epoch) before each report")
    files.of(lineage, generation=epoch).save(state)


def take(files: Checkpoints, trial: optuna.Trial, lineage: int, source: tuple[int, int]) -> None:
    """A segment that exploits a donor starts from the donor's weights and optimizer state
    as of the snapshot ``source`` (donor lineage, epoch), keeping its own learning curve.
    Idempotent: a retry that already trained past that epoch keeps its own file."""
    donor_lineage, g = source
    own = files.of(lineage)
    mine = own.load()
    if mine is not None and int(mine.get("epoch", 0)) > g:
        return
    donor = files.of(donor_lineage, generation=g).load()
    if donor is None:
        raise FileNotFoundError(
            f"the snapshot of trial-{donor_lineage} at epoch {g} is gone, so trial "
            f"{trial.number} cannot take its weights; keep --checkpoint-dir shared by every "
            "worker and untouched while the study runs")
    if mine is not None:  # the member's own curve, not the donor's
        donor["_history"] = mine.get("_history", [])
        donor["report"] = mine.get("report")
    donor["epoch"] = g
    own.save(donor)
