"""Everything that touches the study database: opening URLs and pools, heartbeats and the
reaper of dead workers' trials, study-wide budgets, retries, and the trial-state operations
workers, status and retrain need. The only package of tuner that uses Optuna's private API
(in :mod:`tuner.storage._rdb` and the modules built on it); database errors become
:class:`~tuner.errors.StorageError` with their cause kept.

    storage = connect("postgresql://user@db/tuner", Heartbeat(interval=5))
    budget = Budget(storage.engine, "mnist_mlp"); budget.acquire()
"""

from __future__ import annotations

from tuner.schedules import PAUSED_ATTR, PBT_ATTR, PROMOTION_OF_ATTR, is_paused, is_promotion
from tuner.settings import DEFAULT_URL, Heartbeat
from tuner.storage._attrs import (
    TRAIN_LOSS_CURVE_ATTR,
    set_system_attrs,
    set_user_attrs,
    set_user_attrs_many,
    train_losses,
)
from tuner.storage._budget import Budget, BudgetState
from tuner.storage._controls import (
    USER_STOP,
    Controls,
    WorkerRow,
    check_in,
    check_out,
    delete_controls,
    forget_trial_stop,
    read_controls,
    set_paused,
    set_stop,
    stop_trial,
    study_workers,
)
from tuner.storage._detail import RunningTrial, StudyDetail, study_overview
from tuner.storage._group import report_many, should_prune_many, start_trials, tell_many
from tuner.storage._heartbeat import HeartbeatThread, reap
from tuner.storage._lease import Lease
from tuner.storage._ledger import decided, record, record_first, retired
from tuner.storage._open import (
    TunerStorage,
    checkpoint_folder,
    connect,
    display_url,
    normalize_url,
    same_database,
    study_exists,
)
from tuner.storage._outage import Patience, is_outage
from tuner.storage._overview import StudyRow, studies_overview
from tuner.storage._params import drawing
from tuner.storage._primary import report_primary, should_prune_primary
from tuner.storage._rdb import engine_of, record_heartbeat, refreshed, state, trial_by_number
from tuner.storage._retry import (
    CRASHES_ATTR,
    LINEAGE_ATTR,
    MAX_RETRIES,
    RETRY_OF_ATTR,
    is_retry,
    lineage,
    retry,
    retry_template,
)
from tuner.storage._sampler import Informed, trial_seed
from tuner.storage._trials import (
    all_studies,
    claim,
    fail_and_retry,
    fail_stale_trials,
    heartbeat_ages,
    start_trial,
)

__all__ = [
    "CRASHES_ATTR", "DEFAULT_URL", "LINEAGE_ATTR", "MAX_RETRIES", "RETRY_OF_ATTR", "Budget",
    "Informed", "trial_seed",
    "BudgetState", "Heartbeat", "HeartbeatThread", "all_studies", "checkpoint_folder", "claim",
    "connect", "display_url", "drawing", "engine_of", "TunerStorage", "same_database", "study_exists",
    "fail_and_retry", "fail_stale_trials", "heartbeat_ages", "is_retry", "lineage", "normalize_url",
    "retry_template",
    "record_heartbeat", "refreshed", "report_many", "report_primary", "retry", "set_user_attrs",
    "set_user_attrs_many", "should_prune_many", "should_prune_primary", "start_trial",
    "start_trials", "state", "tell_many", "trial_by_number",
    "TRAIN_LOSS_CURVE_ATTR", "set_system_attrs", "train_losses", "Lease", "Patience", "is_outage", "reap",
    "PAUSED_ATTR", "PROMOTION_OF_ATTR", "PBT_ATTR", "is_paused", "is_promotion", "decided",
    "record", "record_first", "retired", "USER_STOP", "Controls",
    "delete_controls", "forget_trial_stop", "read_controls", "set_paused", "set_stop",
    "stop_trial", "WorkerRow", "check_in", "check_out", "study_workers", "RunningTrial",
    "StudyDetail", "StudyRow", "studies_overview", "study_overview",
]
