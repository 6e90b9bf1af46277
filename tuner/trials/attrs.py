"""What a trial records about itself: who runs it (:func:`start_attrs`), what it kept once
it ended (:func:`closing_attrs`: wall time, device, seed, epochs, versions, train loss, its
loop's ``ctx.info``, why it failed) and what tuner did with it, in a word
(:func:`tuner_state`). The names are the trial schema's (:mod:`tuner.trial_schema`)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from tuner import storage
from tuner.training.context import Context
from tuner.trial_schema import (
    DEVICE_ATTR,
    EPOCHS_ATTR,
    FAIL_REASON_ATTR,
    FUSED_ATTR,
    INFEASIBLE_ATTR,
    LINEAGE_ATTR,
    PBT_ATTR,
    SEED_ATTR,
    TRAIN_LOSS_ATTR,
    VERSIONS_ATTR,
    WALL_TIME_ATTR,
    WORKER_ATTR,
)

if TYPE_CHECKING:
    from tuner.trials.outcome import Outcome


def versions() -> dict[str, str]:
    import torch

    import tuner

    return {"tuner": tuner.__version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "python": platform.python_version()}


def start_attrs(trial: optuna.Trial, device: str) -> dict[str, Any]:
    """The trial's lineage and the worker that runs it."""
    return {LINEAGE_ATTR: storage.lineage(trial),
            WORKER_ATTR: {"host": platform.node(), "pid": os.getpid(), "device": device}}


def closing_attrs(trial: optuna.Trial, ctxs: list[Context], start: float, *, device: str,
                  seed: int, fail_reason: str | None) -> dict[str, Any]:
    """What a trial keeps once it ends: wall time, device, seed, epochs, versions, its
    train-loss curve, what its loop put in ``ctx.info``, why it failed."""
    history = [h for c in ctxs for h in c.history]
    info: dict[str, Any] = {}
    for c in ctxs:
        info.update(c.info)
    attrs: dict[str, Any] = {
        WALL_TIME_ATTR: round(time.perf_counter() - start, 3),
        DEVICE_ATTR: device,
        SEED_ATTR: seed,
        EPOCHS_ATTR: max((int(h["epoch"]) for h in history), default=0),
        VERSIONS_ATTR: versions(),
        **info,
    }
    if any("train_loss" in h for h in history):
        # the last epoch's in the user attrs (one narrow cell in optuna-dashboard's
        # table); the curve is a system attr (TRAIN_LOSS_CURVE_ATTR), for the report
        attrs[TRAIN_LOSS_ATTR] = next((h["train_loss"] for h in reversed(history)
                                       if h.get("train_loss") is not None), None)
    if fail_reason:
        attrs[FAIL_REASON_ATTR] = fail_reason
    return attrs


def tuner_state(trial: optuna.Trial, outcome: Outcome, attrs: Mapping[str, Any]) -> str:
    """What tuner did with the trial, in a word, for optuna-dashboard's trial table (where an
    ASHA rung's pause, a repeat or an infeasible configuration all read "Pruned" or
    "Complete"): stopped, infeasible, repeated, exploited, paused, fused, complete, pruned,
    failed. A paused trial's later promotion and a trial whose worker died are written by
    the storage (promoted, lost)."""
    if outcome.stopped_by_user:
        return "stopped"
    if INFEASIBLE_ATTR in trial.user_attrs:
        return "infeasible"
    if outcome.repeat_of is not None:
        return "repeated"
    if (trial.user_attrs.get(PBT_ATTR) or {}).get("donor") is not None:
        return "exploited"
    if outcome.paused:
        return "paused"
    if outcome.state == TrialState.COMPLETE and attrs.get(FUSED_ATTR):
        return "fused"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(
        outcome.state, "failed")
