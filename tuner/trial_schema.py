"""The names of the attributes tuner stores on a trial, and how to read the ones every
layer needs. Optuna-free and torch-free, at the bottom of the layers, so that storage, the
schedules, the runner and the readers (status, report, retrain) share one spelling.

    lineage(trial)   # the number of the first trial of its retry/continuation chain
"""

from __future__ import annotations

from typing import Any

LINEAGE_ATTR = "lineage"  # number of the first trial of a retry chain: names its checkpoint


def lineage(trial: Any) -> int:
    """The lineage of an Optuna trial or frozen trial: its first trial's number."""
    return int(trial.user_attrs.get(LINEAGE_ATTR, trial.number))
