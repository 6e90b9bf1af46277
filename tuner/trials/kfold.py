"""K-fold trials (``validation: {kfold: K}``): a trial's score is the mean over its folds,
reported as the folds finish (step i is the mean of the first i folds), and a retry takes
the folds its first attempts scored from its curve."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from tuner import storage
from tuner.training.context import Context, StopRequested, TrialPruned
from tuner.trials.objectives import primary
from tuner.trials.reporter import TrialReporter

if TYPE_CHECKING:
    from tuner.trials.runner import TrialRunner


def run_folds(runner: TrialRunner, trial: optuna.Trial, params: dict[str, Any],
              fit: Callable[..., float], ctxs: list[Context]) -> float:
    """Train the trial on each fold (those its curve has not scored yet) and return the mean
    score. ``ctxs`` gets every fold's context, even a fold scored already: its checkpoint is
    cleaned up with the others."""
    spec = runner.spec
    done = fold_scores(trial) if storage.is_retry(trial) else []
    scores = []
    # the running mean goes where an epoch's report goes: the primary curve of a
    # multi-objective study (Optuna's own report refuses there), held through an outage
    reporter = TrialReporter(trial, runner.stop, runner.on_epoch, True, primary(spec),
                             runner.patience)
    for fold in range(spec.kfold or 0):
        ctx = runner.context(trial, fold=fold, prune=False)
        ctxs.append(ctx)
        if fold < len(done):
            scores.append(done[fold])
            continue
        scores.append(float(fit(params, ctx)))
        mean = sum(scores) / len(scores)
        if reporter.report(fold + 1, mean, {}):
            raise TrialPruned(f"pruned after fold {fold + 1}")
        if runner.stop.is_set() and fold + 1 < (spec.kfold or 0):
            raise StopRequested
    reporter.flush()
    if spec.stop.terminator:  # the statistical error of the trial, for the terminator
        from optuna.terminator import report_cross_validation_scores

        with warnings.catch_warnings():  # "deprecated" in Optuna 5: tuner pins it
            warnings.simplefilter("ignore", FutureWarning)
            runner.patience.call(lambda: report_cross_validation_scores(trial, scores))
    return sum(scores) / len(scores)


def fold_scores(trial: optuna.Trial) -> list[float]:
    """The scores of the folds a retried trial's first attempts finished, recovered from the
    running means they reported: fold i scored i*m_i - (i-1)*m_(i-1)."""
    curve = storage.refreshed(trial).intermediate_values
    scores: list[float] = []
    previous = 0.0
    while (step := len(scores) + 1) in curve:
        scores.append(step * curve[step] - (step - 1) * previous)
        previous = curve[step]
    return scores
