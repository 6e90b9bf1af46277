"""One trial, from an Optuna trial to its outcome and recorded attrs.

:class:`TrialRunner` (``runner.py``) walks the lifecycle, start -> draw -> vet -> fit ->
conclude; each concern it meets has a module of its own:

- ``outcome``: what a trial came to (:class:`Outcome`), and the signals that end it early;
- ``dedup``: a configuration that already finished is reused, not trained;
- ``objectives``: every objective's value, constraints and secondary metrics;
- ``kfold``: a trial scored as the mean over its folds;
- ``fused``: same-shape trials trained as one stacked model, their reports written together;
- ``failures``: why a trial failed and what kind of failure it was;
- ``attrs``: what a trial records about itself (the names are :mod:`tuner.trial_schema`'s);
- ``reporter``: epoch reports to the trial, held through database outages;
- ``pausing``, ``snapshots``, ``checkpoints``: the schedule's verdict on a pruned trial,
  the snapshots it asks for, and the checkpoint files;
- ``contexts``: the one place a :class:`~tuner.training.context.Context` is built.
"""

from tuner.trials.attrs import versions
from tuner.trials.failures import (
    FAIL_REASON_CHARS,
    MEMORY_CONSTRAINT,
    FinishedElsewhere,
    fail_reason,
    is_device_assert,
    is_out_of_memory,
)
from tuner.trials.outcome import Outcome
from tuner.trials.runner import TrialRunner

__all__ = ["FAIL_REASON_CHARS", "MEMORY_CONSTRAINT", "FinishedElsewhere", "Outcome",
           "TrialRunner", "fail_reason", "is_device_assert", "is_out_of_memory", "versions"]
