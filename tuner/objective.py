"""The only bridge between Optuna trials and training code.

For each trial: draw params (``space.suggest``), build a :class:`~tuner.context.Context`
whose reports go to ``trial.report`` / ``trial.should_prune``, call the training loop
(tuner's own :func:`tuner.train.fit` or the study's ``trainer:``), and record on the trial
what people look for: learning curves, train loss, epochs, wall time, device, parameter
count, seed, library versions, and why it failed. The study's code and data come prepared
(:class:`~tuner.assets.StudyAssets`); this module only runs trials.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner import space, storage, usercode
from tuner.assets import StudyAssets
from tuner.context import CheckpointStore, Context, StopRequested, TrialPruned
from tuner.errors import DatabaseUnreachable
from tuner.settings import Settings
from tuner.spec import StudySpec


@dataclass(frozen=True)
class Outcome:
    state: TrialState
    value: float | None = None
    fail_reason: str | None = None
    interrupted: bool = False  # stopped by SIGTERM/Ctrl-C: keep its checkpoint, retry it
    checkpoints: tuple[CheckpointStore, ...] = ()


class _TrialReporter:
    """Context reports -> the Optuna trial (and the worker's progress callback).

    While the database is unreachable, reports are held and training goes on (no pruning);
    the next report that reaches the database writes the held ones first, in order. Past
    the worker's patience, a report raises :class:`DatabaseUnreachable` (the training loop
    saved its checkpoint before reporting, so the trial resumes elsewhere)."""

    def __init__(self, trial: optuna.Trial, stop: threading.Event,
                 on_epoch: Callable[[int, int, float], None] | None, prune: bool = True,
                 patience: storage.Patience | None = None):
        self.trial, self._stop, self._on_epoch, self._prune = trial, stop, on_epoch, prune
        self.patience = patience or storage.Patience(300, 0)
        self.held: list[tuple[int, float]] = []

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        if self._on_epoch:
            self._on_epoch(self.trial.number, epoch, value)
        if not self._prune:
            return False
        if math.isfinite(value):
            self.held.append((epoch, value))
        if not self._write_held(wait=False):
            if self.patience.exhausted():
                raise self.patience.error()
            return False
        ok, prune = self.patience.attempt(self.trial.should_prune)
        return bool(prune) if ok else False

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
        """Write every held report (end of the trial, before its result is told)."""
        self._write_held(wait=True)

    def stop_requested(self) -> bool:
        return self._stop.is_set()


def versions() -> dict[str, str]:
    import torch

    import tuner

    return {"tuner": tuner.__version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "python": platform.python_version()}


class TrialRunner:
    """Runs trials of one study in this process: Optuna trial -> context -> trainer ->
    outcome and trial attrs."""

    def __init__(self, assets: StudyAssets, *, checkpoint_dir: str, stop: threading.Event,
                 on_epoch: Callable[[int, int, float], None] | None = None,
                 keep_checkpoints: bool = False, patience: storage.Patience | None = None):
        self.assets, self.spec = assets, assets.spec
        # how long storage calls ride out an unreachable database (the worker sets its own)
        self.patience = patience or storage.Patience(300, 0)
        self.checkpoint_dir, self.stop, self.on_epoch = checkpoint_dir, stop, on_epoch
        self.keep_checkpoints = keep_checkpoints

    @classmethod
    def of(cls, spec: StudySpec, settings: Settings, stop: threading.Event | None = None,
           on_epoch: Callable[[int, int, float], None] | None = None) -> TrialRunner:
        """A runner with fresh assets for ``spec`` on ``settings``' device and folders."""
        assets = StudyAssets(spec, device=settings.device, data_dir=settings.data_dir,
                             download=settings.download)
        return cls(assets, checkpoint_dir=settings.checkpoint_dir, stop=stop or threading.Event(),
                   on_epoch=on_epoch, keep_checkpoints=settings.keep_checkpoints)

    def context(self, trial: optuna.Trial, lineage: int, *, fold: int | None = None,
                prune: bool = True) -> Context:
        import torch

        spec, assets = self.spec, self.assets
        bundle = assets.data() if assets.has_data else None
        if fold is not None and bundle is not None:
            bundle = assets.folds()[fold]
        ckpt = None
        if spec.checkpoint:
            suffix = "" if fold is None else f"-fold{fold}"
            ckpt = CheckpointStore(Path(self.checkpoint_dir) / spec.name
                                   / f"trial-{lineage}{suffix}.pt")
        return Context(
            device=torch.device(assets.device), seed=spec.seed + lineage,
            max_epochs=spec.epochs, task=bundle.task if bundle else spec.task_name,
            metric=spec.metric_name, data=bundle,
            build_model=assets.model_builder(bundle) if bundle is not None else None,
            trial_number=trial.number, amp=spec.amp, compile=spec.compile,
            reporter=_TrialReporter(trial, self.stop, self.on_epoch, prune, self.patience),
            checkpoints=ckpt,
        )

    # ---- one trial ----------------------------------------------------------------------
    def run(self, trial: optuna.Trial) -> Outcome:
        """Train one trial. Never raises for a problem of the trial itself: the outcome says
        COMPLETE, PRUNED or FAIL (with the exception's last line)."""
        from tuner import train

        lineage = storage.lineage(trial)
        self.patience.call(lambda: storage.set_user_attrs(trial, {
            storage.LINEAGE_ATTR: lineage,
            "worker": {"host": platform.node(), "pid": os.getpid(), "device": self.assets.device},
        }))
        fit = self.assets.trainer or train.fit
        start = time.perf_counter()
        ctxs: list[Context] = []
        try:
            params = space.suggest(trial, self.spec)
            if self.spec.kfold:
                value = self._run_folds(trial, lineage, params, fit, ctxs)
            else:
                ctx = self.context(trial, lineage)
                ctxs.append(ctx)
                value = float(fit(params, ctx))
            if not math.isfinite(value):
                raise TrialPruned(f"final metric is {value}")
            outcome = Outcome(TrialState.COMPLETE, value)
        except TrialPruned as e:
            outcome = Outcome(TrialState.PRUNED, fail_reason=str(e))
        except StopRequested:
            outcome = Outcome(TrialState.FAIL, fail_reason="worker stopped; retried from checkpoint",
                              interrupted=True)
        except KeyboardInterrupt:
            self._record(trial, ctxs, start, "interrupted")
            raise
        except DatabaseUnreachable:
            raise  # past the patience: this worker stops; the trial resumes elsewhere
        except Exception as e:  # the user's code failed: the trial fails, the study goes on
            outcome = Outcome(TrialState.FAIL, fail_reason=usercode.one_line(e))
        for c in ctxs:  # reports held through an outage, in order, before the result
            if isinstance(c.reporter, _TrialReporter):
                c.reporter.flush()
        self._record(trial, ctxs, start, outcome.fail_reason)
        stores = tuple(c.checkpoints for c in ctxs if c.checkpoints is not None)
        return dataclasses.replace(outcome, checkpoints=stores)

    def _run_folds(self, trial: optuna.Trial, lineage: int, params: dict[str, Any],
                   fit: Callable[..., float], ctxs: list[Context]) -> float:
        """K-fold: the trial's score is the mean over folds, reported as folds finish (step
        i is the mean of the first i folds). A retry takes the folds its curve already has
        from the curve and trains the rest."""
        done = _fold_scores(trial) if storage.is_retry(trial) else []
        scores = []
        for fold in range(self.spec.kfold or 0):
            ctx = self.context(trial, lineage, fold=fold, prune=False)
            ctxs.append(ctx)  # even for a fold scored already: its checkpoint is cleaned up
            if fold < len(done):
                scores.append(done[fold])
                continue
            scores.append(float(fit(params, ctx)))
            mean = sum(scores) / len(scores)
            if self.on_epoch:
                self.on_epoch(trial.number, fold + 1, mean)
            trial.report(mean, fold + 1)
            if trial.should_prune():
                raise TrialPruned(f"pruned after fold {fold + 1}")
            if self.stop.is_set() and fold + 1 < (self.spec.kfold or 0):
                raise StopRequested
        return sum(scores) / len(scores)

    def _record(self, trial: optuna.Trial, ctxs: list[Context], start: float,
                fail_reason: str | None) -> None:
        history = [h for c in ctxs for h in c.history]
        info: dict[str, Any] = {}
        for c in ctxs:
            info.update(c.info)
        attrs: dict[str, Any] = {
            "wall_time_s": round(time.perf_counter() - start, 3),
            "device": self.assets.device,
            "seed": self.spec.seed + storage.lineage(trial),
            "epochs_run": max((int(h["epoch"]) for h in history), default=0),
            "versions": versions(),
            **info,
        }
        if any("train_loss" in h for h in history):
            attrs["train_loss"] = [h.get("train_loss") for h in history]
        if fail_reason:
            attrs["fail_reason"] = fail_reason
        self.patience.call(lambda: storage.set_user_attrs(trial, attrs))

    def cleanup(self, outcome: Outcome) -> None:
        """Delete a finished trial's checkpoints (call after its result is stored: until then
        a retry elsewhere may still need them). Interrupted trials keep theirs to resume."""
        if outcome.interrupted:
            return
        if self.keep_checkpoints and outcome.state == TrialState.COMPLETE:
            return
        for store in outcome.checkpoints:
            store.delete()


def _fold_scores(trial: optuna.Trial) -> list[float]:
    """The scores of the folds a retried trial's first attempts finished, recovered from the
    running means they reported: fold i scored i*m_i - (i-1)*m_(i-1)."""
    curve = storage.refreshed(trial).intermediate_values
    scores: list[float] = []
    previous = 0.0
    while (step := len(scores) + 1) in curve:
        scores.append(step * curve[step] - (step - 1) * previous)
        previous = curve[step]
    return scores
