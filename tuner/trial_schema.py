"""The trial schema: the names of every attribute tuner stores on a trial, and how to read
the ones every layer needs. Optuna-free and torch-free, at the bottom of the layers, so that
storage, the schedules, the trial runner and the readers (status, report, retrain, warm
start, the console) share one spelling. Nowhere else spells these names.

    lineage(trial)   # the number of the first trial of its retry/continuation chain

User attrs are what people read (optuna-dashboard's trial table, ``tuner trials``); system
attrs (marked below) are tuner's own bookkeeping.
"""

from __future__ import annotations

from typing import Any

# ---- set when the trial starts (tuner.trials) ---------------------------------------------
LINEAGE_ATTR = "lineage"  # number of the first trial of a retry chain: names its checkpoint
WORKER_ATTR = "worker"  # {"host", "pid", "device"} of the process that runs it

# ---- set when the trial ends (tuner.trials.attrs) -----------------------------------------
WALL_TIME_ATTR = "wall_time_s"  # seconds from its start to its end
DEVICE_ATTR = "device"  # the torch device it trained on
SEED_ATTR = "seed"  # the seed it trained with: the study's seed + its lineage
EPOCHS_ATTR = "epochs_run"  # the last epoch it reported (also put in ctx.info by the loops)
VERSIONS_ATTR = "versions"  # {"tuner", "torch", "optuna", "python"}
TRAIN_LOSS_ATTR = "train_loss"  # the last epoch's mean train loss
FAIL_REASON_ATTR = "fail_reason"  # why it failed (or was pruned, stopped, finished elsewhere)
METRICS_ATTR = "metrics"  # every measured objective and constraint metric, by name
STATE_ATTR = "tuner_state"  # what tuner did with it, in a word (tuner.trials.attrs.tuner_state)
PARAM_COUNT_ATTR = "param_count"  # the model's parameters (put in ctx.info by the loop)
FUSED_ATTR = "fused"  # how many trials trained as one stacked model with it (tuner.training.fuse)
PEAK_MEMORY_ATTR = "peak_memory_mib"  # the GPU's peak when it ran out of memory

# ---- what happened to it ------------------------------------------------------------------
INFEASIBLE_ATTR = "infeasible"  # why its configuration cannot run: a constraint, GPU memory
REPEAT_ATTR = "repeat_of"  # the finished trial whose result it reused (dedup): not trained
ELSEWHERE_ATTR = "finished_elsewhere"  # how and when its worker learned it was finished outside
RETRY_OF_ATTR = "retry_of"  # the failed trial this one retries (same lineage)
WARM_START_FROM_ATTR = "warm_start_from"  # the study an enqueued warm-start trial came from

# ---- the schedules' segments (tuner.schedules) --------------------------------------------
PAUSED_ATTR = "paused_at"  # a segment that paused: its rung's (generation's) epoch
PROMOTION_OF_ATTR = "promotion_of"  # a continuation: the paused trial's number
# a PBT continuation: what its schedule decided (epoch, donor, changes) and the
# hyperparameter schedule of its weights; a retry keeps it
PBT_ATTR = "pbt"

# ---- system attrs -------------------------------------------------------------------------
TRAIN_LOSS_CURVE_ATTR = "tuner.train_loss"  # the mean train loss of every epoch
CRASHES_ATTR = "tuner_crashes"  # attempts of the lineage that lost their worker
RETRY_HISTORY_ATTR = "retry_history"  # the numbers of the lineage's failed attempts
FAILED_TRIAL_ATTR = "failed_trial"  # the first of them


def lineage(trial: Any) -> int:
    """The lineage of an Optuna trial or frozen trial: its first trial's number."""
    return int(trial.user_attrs.get(LINEAGE_ATTR, trial.number))
