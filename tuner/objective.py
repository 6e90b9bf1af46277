"""The only bridge between Optuna trials and training code.

For each trial: draw params (``space.suggest``), build a :class:`~tuner.context.Context`
whose reports go to ``trial.report`` / ``trial.should_prune``, call the training loop
(tuner's own :func:`tuner.train.fit` or the study's ``trainer:``), and record on the trial
what people look for: learning curves, train loss, epochs, wall time, device, parameter
count, seed, library versions, and why it failed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner import retry, space, usercode
from tuner.context import CheckpointStore, Context, StopRequested, TrialPruned
from tuner.errors import UserCodeError
from tuner.spec import StudySpec
from tuner.storage import set_user_attrs


@dataclass
class Runtime:
    """Per-worker facts, read once by the CLI and passed down."""

    device: str = "cpu"
    data_dir: str = "data"
    download: bool = True  # fetch missing torchvision datasets into data_dir
    checkpoint_dir: str = "tuner_checkpoints"
    keep_checkpoints: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    # datasets loaded by this worker, reused by all its trials
    data_cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    state: TrialState
    value: float | None = None
    fail_reason: str | None = None
    interrupted: bool = False  # stopped by SIGTERM/Ctrl-C: keep its checkpoint, retry it
    checkpoints: tuple[CheckpointStore, ...] = ()


class _TrialReporter:
    """Context reports -> the Optuna trial (and the worker's progress callback)."""

    def __init__(self, trial: optuna.Trial, stop: threading.Event,
                 on_epoch: Callable[[int, int, float], None] | None, prune: bool = True):
        self.trial, self._stop, self._on_epoch, self._prune = trial, stop, on_epoch, prune

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        if self._on_epoch:
            self._on_epoch(self.trial.number, epoch, value)
        if not self._prune:
            return False
        if math.isfinite(value):
            self.trial.report(value, epoch)
        return self.trial.should_prune()

    def stop_requested(self) -> bool:
        return self._stop.is_set()


def versions() -> dict[str, str]:
    import torch

    import tuner

    return {"tuner": tuner.__version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "python": platform.python_version()}


_last_line = usercode.one_line  # "Type: the message's last line", for fail_reason


class Objective:
    """Runs trials of one study on one worker. Resolves the study's own code once."""

    def __init__(self, spec: StudySpec, runtime: Runtime,
                 on_epoch: Callable[[int, int, float], None] | None = None):
        self.spec, self.runtime, self.on_epoch = spec, runtime, on_epoch
        base = spec.base_dir
        self.trainer = (usercode.resolve(spec.trainer, "trainer", base) if spec.trainer
                        else None)
        self.model_fn = (usercode.resolve(spec.model, "model", base)
                         if usercode_path(spec.model) else None)
        self.data_fn = (usercode.resolve(spec.data, "data", base)
                        if usercode_path(spec.data) else None)

    # ---- data and model ---------------------------------------------------------------
    def data(self) -> Any:
        """The study's data on this worker's device, loaded once per worker."""
        import torch

        from tuner import data as tdata

        spec = self.spec
        frac = spec.validation if isinstance(spec.validation, float) else 0.1
        key = (spec.data, frac, spec.seed, self.runtime.device)
        if key not in self.runtime.data_cache:
            if self.data_fn is not None:
                try:
                    raw = usercode.call_loader(self.data_fn, seed=spec.seed,
                                               data_dir=self.runtime.data_dir)
                except Exception as e:
                    raise UserCodeError(f"data: {spec.data} raised {_last_line(e)}") from None
                bundle = tdata.from_user(raw, spec.task_name, validation=frac, seed=spec.seed,
                                         name=spec.data)
            else:
                bundle = tdata.load_builtin(spec.data, self.runtime.data_dir, validation=frac,
                                            seed=spec.seed, download=self.runtime.download)
            self.runtime.data_cache[key] = bundle.to(torch.device(self.runtime.device))
        return self.runtime.data_cache[key]

    def _needs_data(self) -> bool:
        # a user trainer may bring its own data (no ``data:`` in its study file)
        return self.spec.data is not None

    def model_builder(self, bundle: Any) -> Callable[[Mapping[str, Any]], Any]:
        from tuner import models

        if self.model_fn is not None:
            fn = self.model_fn
            return lambda params: fn(dict(params), bundle.input_shape, bundle.num_outputs)
        family = self.spec.model
        return lambda params: models.build(family, params, bundle.input_shape, bundle.num_outputs)

    def preflight(self) -> None:
        """Check, before any trial starts, that the data loads and the model fits the task:
        one clear error now rather than a study of failed trials."""
        if not self._needs_data():
            return
        bundle = self.data()
        if self.spec.trainer is not None:  # a user loop may use its model its own way
            return
        import torch

        params = space.defaults(self.spec)
        try:
            model = self.model_builder(bundle)(params).to(bundle.device)
            x, _ = next(bundle.batches(bundle.train, 2, shuffle=False))
            with torch.no_grad():
                out = model(x)
        except Exception as e:
            raise UserCodeError(f"model: {self.spec.model} failed on a sample batch of "
                                f"{self.spec.data}: {_last_line(e)}") from None
        want = bundle.num_outputs
        ok = tuple(out.shape) in ((2, want),) + (((2,),) if want == 1 else ())
        if not ok:
            raise UserCodeError(
                f"model: {self.spec.model} returns shape {tuple(out.shape)} for a batch of 2; "
                f"a {self.spec.task_name} model here must return (batch, {want})"
            )

    def _folds(self, bundle: Any) -> list[Any]:
        """The k folds of the study's data, split once per worker like the data itself."""
        key = ("folds", self.spec.kfold, self.spec.seed)
        cached = self.runtime.data_cache.get(key)
        if cached is None or cached[0] is not bundle:
            cached = self.runtime.data_cache[key] = (bundle, bundle.folds(self.spec.kfold,
                                                                          self.spec.seed))
        return cached[1]

    def context(self, trial: optuna.Trial, lineage: int, *, fold: int | None = None,
                prune: bool = True) -> Context:
        import torch

        spec = self.spec
        bundle = self.data() if self._needs_data() else None
        if fold is not None and bundle is not None:
            bundle = self._folds(bundle)[fold]
        ckpt = None
        if spec.checkpoint:
            suffix = "" if fold is None else f"-fold{fold}"
            ckpt = CheckpointStore(Path(self.runtime.checkpoint_dir) / spec.name
                                   / f"trial-{lineage}{suffix}.pt")
        return Context(
            device=torch.device(self.runtime.device), seed=spec.seed + lineage,
            max_epochs=spec.epochs, task=spec.task_name, metric=spec.metric_name, data=bundle,
            build_model=self.model_builder(bundle) if bundle is not None else None,
            trial_number=trial.number, amp=spec.amp, compile=spec.compile,
            reporter=_TrialReporter(trial, self.runtime.stop, self.on_epoch, prune),
            checkpoints=ckpt,
        )

    # ---- one trial ----------------------------------------------------------------------
    def run(self, trial: optuna.Trial) -> Outcome:
        """Train one trial. Never raises for a problem of the trial itself: the outcome says
        COMPLETE, PRUNED or FAIL (with the exception's last line)."""
        from tuner import train

        lineage = retry.lineage(trial)
        set_user_attrs(trial, {
            retry.LINEAGE_ATTR: lineage,
            "worker": {"host": platform.node(), "pid": os.getpid(), "device": self.runtime.device},
        })
        fit = self.trainer or train.fit
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
        except Exception as e:  # the user's code failed: the trial fails, the study goes on
            outcome = Outcome(TrialState.FAIL, fail_reason=_last_line(e))
        self._record(trial, ctxs, start, outcome.fail_reason)
        stores = tuple(c.checkpoints for c in ctxs if c.checkpoints is not None)
        return dataclasses.replace(outcome, checkpoints=stores)

    def _run_folds(self, trial: optuna.Trial, lineage: int, params: dict[str, Any],
                   fit: Callable[..., float], ctxs: list[Context]) -> float:
        """K-fold: the trial's score is the mean over folds, reported as folds finish (step
        i is the mean of the first i folds). A retry takes the folds its curve already has
        from the curve and trains the rest."""
        done = _fold_scores(trial) if retry.is_retry(trial) else []
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
            if self.runtime.stop.is_set() and fold + 1 < (self.spec.kfold or 0):
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
            "device": self.runtime.device,
            "seed": self.spec.seed + retry.lineage(trial),
            "epochs_run": max((int(h["epoch"]) for h in history), default=0),
            "versions": versions(),
            **info,
        }
        if any("train_loss" in h for h in history):
            attrs["train_loss"] = [h.get("train_loss") for h in history]
        if fail_reason:
            attrs["fail_reason"] = fail_reason
        set_user_attrs(trial, attrs)

    def cleanup(self, outcome: Outcome) -> None:
        """Delete a finished trial's checkpoints (call after its result is stored: until then
        a retry elsewhere may still need them). Interrupted trials keep theirs to resume."""
        if outcome.interrupted:
            return
        if self.runtime.keep_checkpoints and outcome.state == TrialState.COMPLETE:
            return
        for store in outcome.checkpoints:
            store.delete()


def _fold_scores(trial: optuna.Trial) -> list[float]:
    """The scores of the folds a retried trial's first attempts finished, recovered from the
    running means they reported: fold i scored i*m_i - (i-1)*m_(i-1)."""
    # optuna has no public accessor for a live trial's intermediate values
    curve = trial.study._storage.get_trial(trial._trial_id).intermediate_values
    scores: list[float] = []
    previous = 0.0
    while (step := len(scores) + 1) in curve:
        scores.append(step * curve[step] - (step - 1) * previous)
        previous = curve[step]
    return scores


def usercode_path(name: str | None) -> bool:
    return name is not None and ":" in name
