"""A trial's lifecycle, the only bridge between Optuna trials and training code:
start (lineage and worker) -> draw (``space.suggest``) -> vet (dedup, constraints known
before training) -> fit (tuner's :func:`tuner.training.train.fit` or the study's ``trainer:``, on a
:class:`~tuner.training.context.Context` whose reports go to the trial) -> conclude (what it returned
or raised becomes its :class:`~tuner.trials.outcome.Outcome` and its recorded attrs).

Each concern along the way has its module: ``dedup``, ``kfold``, ``objectives`` (their values,
constraints, secondary metrics), ``failures``, ``attrs``, ``reporter``, ``pausing`` (the
schedule's verdict on a pruned trial), ``snapshots`` (only when the schedule asks),
``checkpoints``, ``fused`` (same-shape trials trained as one). The study's code and data
come prepared (:class:`~tuner.training.assets.StudyAssets`); this module only runs trials.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import schedules, storage
from tuner.config import StudySpec, space
from tuner.errors import CheckpointUnwritable, DatabaseUnreachable
from tuner.settings import Settings
from tuner.training.assets import StudyAssets
from tuner.training.context import Context, StopRequested, TrialPruned
from tuner.trial_schema import (
    ELSEWHERE_ATTR,
    FAIL_REASON_ATTR,
    INFEASIBLE_ATTR,
    METRICS_ATTR,
    STATE_ATTR,
    TRAIN_LOSS_CURVE_ATTR,
)
from tuner.trials import attrs, contexts, dedup, failures, fused, kfold, objectives, pausing, snapshots
from tuner.trials.checkpoints import Checkpoints
from tuner.trials.outcome import Infeasible, Outcome, Repeat
from tuner.trials.reporter import TrialReporter

# what an attempt gives back: the trainer's result, the params, what was measured, fit seconds
Attempt = tuple[Any, dict[str, Any], dict[str, float], float]


class TrialRunner:
    """Runs trials of one study in this process: Optuna trial -> context -> trainer ->
    outcome and trial attrs."""

    def __init__(self, assets: StudyAssets, *, checkpoint_dir: str, stop: threading.Event,
                 on_epoch: Callable[[int, int, float], None] | None = None,
                 keep_checkpoints: bool = False, patience: storage.Patience | None = None,
                 fuse: str | int = "off"):
        self.assets, self.spec = assets, assets.spec
        # same-shape trials trained as one (tuner.training.fuse): "off", "auto" or K members
        self.fuse = fuse
        self.fuse_k: int | None = None  # fuse: auto's K, timed once (fused.fuse_size)
        self.fuse_rates: dict[int, float] = {}  # trials per second at each K it timed
        # how long storage calls ride out an unreachable database (the worker sets its own)
        self.patience = patience or storage.Patience(300, 0)
        self.stop, self.on_epoch = stop, on_epoch
        self.files = Checkpoints(checkpoint_dir, self.spec.name, keep_checkpoints)
        # trials a person asked to stop at their next epoch (the worker's heartbeat sets it)
        self.user_stops: frozenset[int] = frozenset()

    @classmethod
    def of(cls, spec: StudySpec, settings: Settings, stop: threading.Event | None = None,
           on_epoch: Callable[[int, int, float], None] | None = None) -> TrialRunner:
        """A runner with fresh assets for ``spec`` on ``settings``' device and folders."""
        assets = StudyAssets(spec, device=settings.device, data_dir=settings.data_dir,
                             download=settings.download)
        return cls(assets, checkpoint_dir=settings.checkpoint_dir, stop=stop or threading.Event(),
                   on_epoch=on_epoch, keep_checkpoints=settings.keep_checkpoints,
                   fuse=settings.fuse_mode(spec.fuse))

    @cached_property
    def schedule(self) -> schedules.Schedule:
        return schedules.of(self.spec)

    def context(self, trial: optuna.Trial, *, fold: int | None = None,
                prune: bool = True) -> Context:
        """The context the trial (or one of its folds) trains with: its data, seed and
        checkpoint file, its reports going to the trial."""
        assets, lineage = self.assets, storage.lineage(trial)
        bundle = assets.data() if assets.has_data else None
        if fold is not None and bundle is not None:
            bundle = assets.folds()[fold]
        reporter = TrialReporter(trial, self.stop, self.on_epoch, prune,
                                 objectives.primary(self.spec), self.patience,
                                 asked=lambda n: n in self.user_stops)
        return contexts.build(
            assets, bundle, seed=self.spec.seed + lineage, trial_number=trial.number,
            reporter=reporter,
            checkpoints=self.files.of(lineage, fold=fold) if self.spec.checkpoint else None)

    # ---- one trial ----------------------------------------------------------------------
    def run(self, trial: optuna.Trial) -> Outcome:
        """Train one trial. Never raises for a problem of the trial itself: the outcome says
        COMPLETE, PRUNED or FAIL (with the exception's last line)."""
        begin = self.start([trial], write=False)  # written with its params
        start = time.perf_counter()
        ctxs: list[Context] = []

        def attempt() -> Attempt:
            params = self.draw(trial, begin[0][1])
            return self.fit(trial, params, self.vet(trial, params), ctxs)

        return self.conclude(trial, ctxs, start, attempt)

    def start(self, trials: list[optuna.Trial], write: bool = True
              ) -> list[tuple[optuna.Trial, dict[str, Any]]]:
        """Mark the trials with their lineage and worker (one transaction; with ``write``
        False, the caller writes them: a lone trial's go with its params)."""
        device = self.assets.device
        begin = [(t, attrs.start_attrs(t, device)) for t in trials]
        if write:
            self.patience.call(lambda: storage.set_user_attrs_many(begin))
        from tuner.device import reset_peak_memory

        reset_peak_memory(device)
        return begin

    def draw(self, trial: optuna.Trial, begin: dict[str, Any] | None = None) -> dict[str, Any]:
        """The trial's params, written in one transaction with ``begin`` (its start attrs); a
        segment the schedule starts from another lineage's snapshot (PBT's exploit) takes its
        weights first."""
        with storage.drawing(trial, begin, call=self.patience.call):
            params = space.suggest(trial, self.spec)
        if (source := self.schedule.weights_from(trial)) is not None:
            snapshots.take(self.files, trial, storage.lineage(trial), source)
        return params

    def vet(self, trial: optuna.Trial, params: dict[str, Any],
            group: frozenset[int] = frozenset(),
            seen: list[FrozenTrial] | None = None) -> dict[str, float]:
        """Raise :class:`Repeat` or :class:`Infeasible` when the drawn trial needs no
        training; else what was measured before training. ``group``: the trials trained with
        this one (never waited for); ``seen``: the study's trials as just read (a fused
        group's one read for all its members), for the first look at repeats."""
        # PBT members are one population, not configurations to reuse
        if self.spec.dedup and not self.schedule.population:
            dedup.reuse_identical(trial, self.spec, self.patience, self.stop, group, seen)
        return objectives.before_training(self.assets, trial, params)

    def fit(self, trial: optuna.Trial, params: dict[str, Any], measured: dict[str, float],
            ctxs: list[Context]) -> Attempt:
        """Train the vetted trial (each fold under k-fold); ``ctxs`` gets its contexts."""
        from tuner.training import train

        fit = self.assets.trainer or train.fit
        fit_start = time.perf_counter()
        if self.spec.kfold:
            raw: Any = kfold.run_folds(self, trial, params, fit, ctxs)
        else:
            ctx = self.context(trial)
            ctxs.append(ctx)
            raw = fit(params, ctx)
        return raw, params, measured, time.perf_counter() - fit_start

    def conclude(self, trial: optuna.Trial, ctxs: list[Context], start: float,
                 attempt: Callable[[], Attempt]) -> Outcome:
        """Run ``attempt`` and turn what it returns or raises into the trial's outcome and
        closing attrs (in the outcome: the worker's tell writes them with the result)."""
        try:
            outcome = self._outcome(trial, ctxs, attempt)
        except KeyboardInterrupt:
            closing = self._closing(trial, ctxs, start, "interrupted")
            self.patience.call(lambda: storage.set_user_attrs_many([(trial, closing)]))
            raise
        for c in ctxs:  # reports held through an outage, in order, before the result
            if isinstance(c.reporter, TrialReporter):
                c.reporter.flush()
        closing = self._closing(trial, ctxs, start, outcome.fail_reason)
        if outcome.elsewhere:  # recorded on the finished trial: what its worker saw
            closing[ELSEWHERE_ATTR] = outcome.fail_reason
            if outcome.state != TrialState.FAIL:
                closing.pop(FAIL_REASON_ATTR, None)
        closing[STATE_ATTR] = attrs.tuner_state(trial, outcome, closing)
        curve = [h.get("train_loss") for c in ctxs for h in c.history]
        system = {TRAIN_LOSS_CURVE_ATTR: curve} if any(v is not None for v in curve) else {}
        if not outcome.broken_device:
            from tuner.device import free_device_cache

            free_device_cache(self.assets.device)
        stores = tuple(c.checkpoints for c in ctxs if c.checkpoints is not None)
        return dataclasses.replace(outcome, checkpoints=stores, attrs=closing,
                                   system_attrs=system)

    def _outcome(self, trial: optuna.Trial, ctxs: list[Context],
                 attempt: Callable[[], Attempt]) -> Outcome:
        """What the attempt came to; raises only what stops this worker."""
        try:
            raw, params, measured, fit_s = attempt()
            if not isinstance(raw, tuple | list):
                raw = float(raw)
            values = objectives.values(self.assets, raw, params, ctxs, measured, fit_s)
            value = values[self.spec.objective_names.index(self.spec.metric_name)]
            if not all(math.isfinite(v) for v in values):
                raise TrialPruned(f"final metric is {value}")
            objectives.constrain(self.spec, trial, measured)
            if objectives.wanted(self.spec) or self.spec.multi_objective:
                storage.set_user_attrs(trial, {METRICS_ATTR: dict(sorted(measured.items()))})
            return Outcome(TrialState.COMPLETE, value, values=values)
        except Repeat as r:
            return r.outcome
        except Infeasible as e:
            storage.set_user_attrs(trial, {INFEASIBLE_ATTR: str(e)})
            return Outcome(TrialState.PRUNED, fail_reason=str(e))
        except TrialPruned as e:
            return pausing.pruned(trial, ctxs, e, self.schedule, self.files, self.patience)
        except StopRequested:
            if trial.number in self.user_stops and not self.stop.is_set():
                return Outcome(TrialState.FAIL, fail_reason=storage.USER_STOP,
                               stopped_by_user=True)
            return Outcome(TrialState.FAIL, fail_reason="worker stopped; retried from "
                           "checkpoint", interrupted=True)
        except CheckpointUnwritable as e:  # this worker's disk: retried from the last good one
            return Outcome(TrialState.FAIL, fail_reason=str(e), interrupted=True, error=e)
        except DatabaseUnreachable:
            raise  # past the patience: this worker stops; the trial resumes elsewhere
        except Exception as e:  # the user's code failed: the trial fails, the study goes on
            if failures.is_finished_elsewhere(e):
                return failures.elsewhere(trial, ctxs, self.patience)
            return failures.failed(trial, e, self.assets.device)

    def _closing(self, trial: optuna.Trial, ctxs: list[Context], start: float,
                 fail_reason: str | None) -> dict[str, Any]:
        return attrs.closing_attrs(trial, ctxs, start, device=self.assets.device,
                                   seed=self.spec.seed + storage.lineage(trial),
                                   fail_reason=fail_reason)

    # ---- same-shape trials trained as one (tuner.trials.fused) ---------------------------
    def fuse_size(self) -> int:
        return fused.fuse_size(self)

    def fusable(self, trial: optuna.Trial) -> bool:
        return fused.fusable(trial)

    def run_group(self, trials: list[optuna.Trial]) -> list[Outcome]:
        return fused.run_group(self, trials)

    # ---- after the trial ----------------------------------------------------------------
    def cleanup(self, outcome: Outcome) -> None:
        """Delete a finished trial's checkpoints (call after its result is stored: until then
        a retry elsewhere may still need them). Interrupted trials keep theirs to resume."""
        if outcome.interrupted or outcome.paused or outcome.stopped_by_user:
            return
        if self.files.keep and outcome.state == TrialState.COMPLETE:
            return
        for store in outcome.checkpoints:
            store.delete()

    def drop_checkpoint(self, lineage: int) -> None:
        """Delete the checkpoint of a lineage that will never run again (a retired pause)."""
        self.files.drop(lineage)

    def drop_snapshots(self) -> None:
        """Once the study is over: the generation snapshots and half-written checkpoints."""
        self.files.drop_snapshots()
