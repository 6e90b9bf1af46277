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
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tuner import config as sp
from tuner import measure, schedules, space, storage, vocab
from tuner.assets import StudyAssets
from tuner.config import StudySpec
from tuner.context import CheckpointStore, Context, StopRequested, TrialPruned
from tuner.errors import CheckpointUnwritable, DatabaseUnreachable, TunerError
from tuner.gate import inside_folder
from tuner.settings import Settings


@dataclass(frozen=True)
class Outcome:
    state: TrialState
    value: float | None = None
    fail_reason: str | None = None
    interrupted: bool = False  # stopped by SIGTERM/Ctrl-C: keep its checkpoint, retry it
    checkpoints: tuple[CheckpointStore, ...] = ()
    # every objective's value, in the study's order (``value`` is the reported metric's)
    values: tuple[float, ...] | None = None
    # a CUDA device-side assert: this process's GPU context is broken, the worker must exit
    broken_device: bool = False
    # the number of the finished trial whose result this one reused (dedup): nothing trained
    repeat_of: int | None = None
    # ASHA: the trial reached a rung and waits for a promotion; its checkpoint stays
    paused: bool = False
    # why this worker must stop after the trial (its retry queued, as for ``interrupted``)
    error: TunerError | None = None
    # the trial was finished from outside while it ran (optuna-dashboard's "Fail trial",
    # another process's tell): its worker stopped it and told nothing; ``state`` is the one
    # it was given there
    elsewhere: bool = False
    # stopped at an epoch because a person asked (``tuner stop-trial``): its checkpoint stays,
    # and ``tuner retry`` resumes it
    stopped_by_user: bool = False


class _Repeat(Exception):  # noqa: N818 - a control-flow signal, like TrialPruned
    """The configuration already finished in this study: its result is reused."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.fail_reason or "repeat")
        self.outcome = outcome


REPEAT_ATTR = "repeat_of"
DEDUP_POLL_S = 0.5  # how often a trial waiting for an identical running one looks again
DEDUP_DRAW_WAIT_S = 10.0  # the longest a trial waits for an earlier one to draw its params


class FinishedElsewhere(Exception):  # noqa: N818 - a control-flow signal, like TrialPruned
    """The running trial was finished from outside (optuna-dashboard's "Fail trial" or
    another process's tell): stop training it, it has nothing more to record."""


ELSEWHERE_ATTR = "finished_elsewhere"  # user attr: how and when its worker learned of it


def _finished_elsewhere(trial: optuna.Trial, e: BaseException) -> FinishedElsewhere:
    return FinishedElsewhere(f"trial {trial.number} was finished from outside while it ran "
                             f"(optuna-dashboard, or another process's tell): {e}")


def _is_finished_elsewhere(e: BaseException) -> bool:
    """Raised because the trial was finished from outside, even if the user's loop wrapped
    it."""
    return any(isinstance(c, FinishedElsewhere | UpdateFinishedTrialError) for c in _chain(e))


class _Infeasible(Exception):
    """A constraint known before training (params, size_mb) rejects the configuration."""


INFEASIBLE_ATTR = "infeasible"

# a trial that could not run where it ran (out of GPU memory) is PRUNED with INFEASIBLE_ATTR,
# not FAIL, and violates constraint MEMORY_CONSTRAINT (Trial.set_constraint)
MEMORY_CONSTRAINT = "gpu_memory"
FAIL_REASON_CHARS = 1000


def fail_reason(e: BaseException) -> str:
    """``Type: message`` with every line of the message and of its causes, on one line: CUDA
    errors name their cause on the first line and advice on the last."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        lines = [line.strip() for line in str(cur).splitlines() if line.strip()]
        parts.append(f"{type(cur).__name__}: {' | '.join(lines)}" if lines
                     else type(cur).__name__)
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return " <- ".join(parts)[:FAIL_REASON_CHARS]


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA out-of-memory error, even wrapped by a user's trainer."""
    import torch

    return any(isinstance(c, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(c)
               for c in _chain(e))


def is_device_assert(e: BaseException) -> bool:
    """A CUDA device-side assert (an index out of range in a kernel, say): after one, every
    CUDA call of this process fails."""
    return any("device-side assert" in str(c) for c in _chain(e))


class _TrialReporter:
    """Context reports -> the Optuna trial (and the worker's progress callback).

    While the database is unreachable, reports are held and training goes on (no pruning);
    the next report that reaches the database writes the held ones first, in order. Past
    the worker's patience, a report raises :class:`DatabaseUnreachable` (the training loop
    saved its checkpoint before reporting, so the trial resumes elsewhere)."""

    def __init__(self, trial: optuna.Trial, stop: threading.Event,
                 on_epoch: Callable[[int, int, float], None] | None, prune: bool = True,
                 primary: tuple[int, str] | None = None,
                 patience: storage.Patience | None = None,
                 asked: Callable[[int], bool] | None = None):
        self.trial, self._stop, self._on_epoch, self._prune = trial, stop, on_epoch, prune
        # whether a person asked this trial to stop (tuner stop-trial)
        self._asked = asked or (lambda n: False)
        # (index, direction) of the pruned-on objective of a multi-objective study, whose
        # curve tuner records and judges itself: Optuna's report/should_prune refuse there
        self._primary = primary
        self.patience = patience or storage.Patience(300, 0)
        self.held: list[tuple[int, float]] = []
        # a fused group's reports, written together (context.report_together); None: alone
        self.together: _GroupReports | None = None

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        """Write the report; True: prune. Raises :class:`FinishedElsewhere` when the trial
        was finished from outside meanwhile."""
        try:
            return self._report(epoch, value)
        except UpdateFinishedTrialError as e:
            self.held.clear()
            raise _finished_elsewhere(self.trial, e) from e

    def _report(self, epoch: int, value: float) -> bool:
        if self._on_epoch:
            self._on_epoch(self.trial.number, epoch, value)
        if not self._prune:
            return False
        if self._primary is not None:
            if not math.isfinite(value):
                return False
            storage.report_primary(self.trial, epoch, value)
            index, direction = self._primary
            return storage.should_prune_primary(self.trial, index, direction,
                                                self.trial.study.pruner)
        if math.isfinite(value):
            self.held.append((epoch, value))
        if not self._write_held(wait=False):
            if self.patience.exhausted():
                raise self.patience.error()
            return False
        ok, prune = self.patience.attempt(self.trial.should_prune)
        return bool(prune) if ok else False

    def joins_a_group(self) -> bool:
        """Whether this trial's reports may be written with other members' (_GroupReports):
        a pruned-on, single-objective curve, written by Optuna's own report."""
        return self._prune and self._primary is None

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
        """Write every held report (end of the trial, before its result is told); a trial
        finished from outside meanwhile takes none."""
        try:
            self._write_held(wait=True)
        except UpdateFinishedTrialError:
            self.held.clear()

    def stop_requested(self) -> bool:
        return self._stop.is_set() or self._asked(self.trial.number)


class _GroupReports:
    """The reports of a fused group's members after an epoch, written together: every
    member's intermediate values in one transaction (:func:`tuner.storage.report_many`) and
    the pruning checks against one read of the study (:func:`tuner.storage.should_prune_many`),
    each member keeping its own curve and its own verdict. Through an outage it does what
    each member's :class:`_TrialReporter` does alone: the reports are held and written
    later, in order (the next epoch's write, or the trial's flush), and no member is pruned
    while the database is unreachable; past the patience, :class:`DatabaseUnreachable`."""

    def __init__(self, patience: storage.Patience):
        self.patience = patience

    def report_many(self, reports: Sequence[tuple[Any, int, float, Mapping[str, float]]]
                    ) -> list[bool | Exception]:
        members: list[_TrialReporter] = [r for r, _, _, _ in reports]
        for r, epoch, value, _ in reports:
            if r._on_epoch:
                r._on_epoch(r.trial.number, epoch, value)
            r.held.append((epoch, value))  # finite: report_together judged the others
        # one transaction: either every member's held reports land, or none (held for later)
        ok, written = self.patience.attempt(
            lambda: storage.report_many([(r.trial, list(r.held)) for r in members]))
        if not ok or written is None:
            if self.patience.exhausted():
                raise self.patience.error()
            return [False] * len(members)
        for r, w in zip(members, written, strict=True):
            if w:
                r.held.clear()
        judged = [r.trial for r, w in zip(members, written, strict=True) if w]
        ok, prunes = self.patience.attempt(lambda: storage.should_prune_many(judged))
        verdicts = iter(prunes if ok and prunes is not None else [False] * len(judged))
        return [next(verdicts) if w else _finished_elsewhere(r.trial, UpdateFinishedTrialError(
                    "its report was not written"))
                for r, w in zip(members, written, strict=True)]


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
                 keep_checkpoints: bool = False, patience: storage.Patience | None = None,
                 fuse: str | int = "off"):
        self.assets, self.spec = assets, assets.spec
        # same-shape trials trained as one (tuner.fuse): "off", "auto" or K members
        self.fuse = fuse
        # how long storage calls ride out an unreachable database (the worker sets its own)
        self.patience = patience or storage.Patience(300, 0)
        self.checkpoint_dir, self.stop, self.on_epoch = checkpoint_dir, stop, on_epoch
        self.keep_checkpoints = keep_checkpoints
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
            ckpt = CheckpointStore(inside_folder(self.checkpoint_dir, spec.name)
                                   / f"trial-{lineage}{suffix}.pt")
        return Context(
            device=torch.device(assets.device), seed=spec.seed + lineage,
            max_epochs=spec.epochs, task=bundle.task if bundle else spec.task_name,
            metric=spec.metric_name, data=bundle,
            build_model=assets.model_builder(bundle) if bundle is not None else None,
            trial_number=trial.number, amp=spec.amp, compile=spec.compile,
            reporter=_TrialReporter(trial, self.stop, self.on_epoch, prune, self._primary(),
                                    self.patience, asked=lambda n: n in self.user_stops),
            checkpoints=ckpt,
        )

    def _primary(self) -> tuple[int, str] | None:
        if not self.spec.multi_objective:
            return None
        index = self.spec.objective_names.index(self.spec.metric_name)
        return index, self.spec.directions[index]

    # ---- objectives and constraints -------------------------------------------------------
    def _wanted(self) -> set[str]:
        return {*self.spec.objective_names, *self.spec.constraints} & set(vocab.SECONDARY_METRICS)

    def _model(self, params: Mapping[str, Any]) -> Any:
        assets = self.assets
        if not assets.has_data:
            return None
        return assets.model_builder(assets.data())(params)

    def _before_training(self, trial: optuna.Trial, params: Mapping[str, Any]) -> dict[str, float]:
        """params and size_mb when the study needs them; raises :class:`_Infeasible` when a
        constraint on them fails (no epoch is spent)."""
        if not self._wanted() & set(vocab.BEFORE_TRAINING):
            return {}
        model = self._model(params)
        measured = measure.size(model) if model is not None else {}
        self._constrain(trial, measured, before=True)
        return measured

    def _constrain(self, trial: optuna.Trial, measured: Mapping[str, float], *,
                   before: bool = False) -> None:
        """Tell the sampler how far each measured metric is from its bounds (Optuna's
        constraints: <= 0 is feasible)."""
        broken = []
        for name, bound in self.spec.constraints.items():
            if name not in measured or (not before and name in vocab.BEFORE_TRAINING):
                continue  # not measured, or set before training already
            violation = bound.violation(measured[name])
            trial.set_constraint(name, violation)
            if violation > 0:
                broken.append(f"{name} {measured[name]:.4g} outside "
                              f"[{bound.min if bound.min is not None else '-inf'}, "
                              f"{bound.max if bound.max is not None else 'inf'}]")
        if broken and before:
            raise _Infeasible("infeasible before training: " + "; ".join(broken))

    def _values(self, raw: Any, params: Mapping[str, Any], ctxs: list[Context],
                measured: dict[str, float], fit_s: float) -> tuple[float, ...]:
        """Every objective's value: a trainer's tuple gives them in order; otherwise the
        returned value is the reported metric's, built-in secondary metrics are measured
        here, and the rest come from the last ``ctx.report`` extras or ``ctx.info``."""
        names = self.spec.objective_names
        if isinstance(raw, tuple | list):
            if len(raw) != len(names):
                raise ValueError(f"the trainer returned {len(raw)} values for the "
                                 f"{len(names)} objectives {', '.join(names)}")
            out = dict(zip(names, map(float, raw), strict=True))
        else:
            out = {self.spec.metric_name: float(raw)}
        last = ctxs[-1].history[-1] if ctxs and ctxs[-1].history else {}
        info: dict[str, Any] = {k: v for c in ctxs for k, v in c.info.items()}
        wanted = self._wanted()
        if "latency_ms" in wanted and "latency_ms" not in out and self.assets.has_data:
            bundle = self.assets.data()
            split = bundle.val if bundle.val is not None else bundle.train
            # one batch as the model sees it: normalised, on the device
            batch, _ = next(bundle.batches(split, int(params.get("batch_size", 128)),
                                           shuffle=False))
            measured["latency_ms"] = measure.latency_ms(self._model(params), batch)
        if "epoch_s" in wanted:
            epochs = max(1, len([h for c in ctxs for h in c.history]))
            measured["epoch_s"] = fit_s / epochs
        for name in [*names, *self.spec.constraints]:
            if name in out or name in measured:
                continue
            for source in (last.get(name), last.get(f"val_{name}"), info.get(name)):
                if isinstance(source, int | float):
                    measured[name] = float(source)
                    break
        for name in names:
            if name not in out:
                if name not in measured:
                    raise ValueError(f"objective {name} has no value; return a tuple of every "
                                     f"objective or ctx.report(epoch, value, {name}=...)")
                out[name] = measured[name]
        measured.update(out)
        return tuple(out[n] for n in names)

    # ---- one trial ----------------------------------------------------------------------
    def run(self, trial: optuna.Trial) -> Outcome:
        """Train one trial. Never raises for a problem of the trial itself: the outcome says
        COMPLETE, PRUNED or FAIL (with the exception's last line)."""
        from tuner import train

        fit = self.assets.trainer or train.fit
        lineage = self._start(trial)
        start = time.perf_counter()
        ctxs: list[Context] = []

        def attempt() -> tuple[Any, dict[str, Any], dict[str, float], float]:
            params, measured = self._prepare(trial)
            fit_start = time.perf_counter()
            if self.spec.kfold:
                raw: Any = self._run_folds(trial, lineage, params, fit, ctxs)
            else:
                ctx = self.context(trial, lineage)
                ctxs.append(ctx)
                raw = fit(params, ctx)
            return raw, params, measured, time.perf_counter() - fit_start

        return self._conclude(trial, ctxs, start, attempt)

    def _start(self, trial: optuna.Trial) -> int:
        """Mark the trial with its lineage and worker; returns the lineage."""
        lineage = storage.lineage(trial)
        self.patience.call(lambda: storage.set_user_attrs(trial, self._start_attrs(trial)))
        _reset_peak_memory(self.assets.device)
        return lineage

    def _start_attrs(self, trial: optuna.Trial) -> dict[str, Any]:
        return {storage.LINEAGE_ATTR: storage.lineage(trial),
                "worker": {"host": platform.node(), "pid": os.getpid(),
                           "device": self.assets.device}}

    def _prepare(self, trial: optuna.Trial) -> tuple[dict[str, Any], dict[str, float]]:
        """Draw the params; raises :class:`_Repeat` or :class:`_Infeasible` when the trial
        needs no training."""
        params = self._draw(trial)
        return params, self._vet(trial, params)

    def _draw(self, trial: optuna.Trial) -> dict[str, Any]:
        params = space.suggest(trial, self.spec)
        self._exploit(trial, storage.lineage(trial))
        return params

    def _vet(self, trial: optuna.Trial, params: Mapping[str, Any],
             group: frozenset[int] = frozenset(),
             seen: list[FrozenTrial] | None = None) -> dict[str, float]:
        """Raise :class:`_Repeat` or :class:`_Infeasible` when the drawn trial needs no
        training; else what was measured before training. ``group``: the trials trained with
        this one (never waited for); ``seen``: the study's trials as just read (a fused
        group's one read for all its members), for the first look at repeats."""
        # PBT members are one population, not configurations to reuse
        if self.spec.dedup and not schedules.of(self.spec).population:
            self._reuse_identical(trial, group, seen)
        return self._before_training(trial, params)

    def _conclude(self, trial: optuna.Trial, ctxs: list[Context], start: float,
                  attempt: Callable[[], tuple[Any, dict[str, Any], dict[str, float], float]],
                  records: list[tuple[optuna.Trial, dict[str, Any]]] | None = None) -> Outcome:
        """Run ``attempt`` (params -> the trainer's result) and turn what it returns or
        raises into the trial's outcome and attrs. ``records``: where a fused group gathers
        its members' closing attrs, to write them together (else written here)."""
        try:
            raw, params, measured, fit_s = attempt()
            if not isinstance(raw, tuple | list):
                raw = float(raw)
            values = self._values(raw, params, ctxs, measured, fit_s)
            value = values[self.spec.objective_names.index(self.spec.metric_name)]
            if not all(math.isfinite(v) for v in values):
                raise TrialPruned(f"final metric is {value}")
            self._constrain(trial, measured)
            if self._wanted() or self.spec.multi_objective:
                storage.set_user_attrs(trial, {"metrics": dict(sorted(measured.items()))})
            outcome = Outcome(TrialState.COMPLETE, value, values=values)
        except _Repeat as r:
            outcome = r.outcome
        except _Infeasible as e:
            storage.set_user_attrs(trial, {INFEASIBLE_ATTR: str(e)})
            outcome = Outcome(TrialState.PRUNED, fail_reason=str(e))
        except TrialPruned as e:
            outcome = self._pruned(trial, ctxs, e)
        except StopRequested:
            if trial.number in self.user_stops and not self.stop.is_set():
                outcome = Outcome(TrialState.FAIL, fail_reason=storage.USER_STOP,
                                  stopped_by_user=True)
            else:
                outcome = Outcome(TrialState.FAIL, fail_reason="worker stopped; retried from "
                                  "checkpoint", interrupted=True)
        except CheckpointUnwritable as e:  # this worker's disk: retried from the last good one
            outcome = Outcome(TrialState.FAIL, fail_reason=str(e), interrupted=True, error=e)
        except KeyboardInterrupt:
            self._record(trial, ctxs, start, "interrupted")
            raise
        except DatabaseUnreachable:
            raise  # past the patience: this worker stops; the trial resumes elsewhere
        except Exception as e:  # the user's code failed: the trial fails, the study goes on
            outcome = (self._elsewhere(trial, ctxs) if _is_finished_elsewhere(e)
                       else self._failed(trial, e))
        for c in ctxs:  # reports held through an outage, in order, before the result
            if isinstance(c.reporter, _TrialReporter):
                c.reporter.flush()
        attrs = self._closing_attrs(trial, ctxs, start, outcome.fail_reason)
        if outcome.elsewhere:  # recorded on the finished trial: what its worker saw
            attrs[ELSEWHERE_ATTR] = outcome.fail_reason
            if outcome.state != TrialState.FAIL:
                attrs.pop("fail_reason", None)
        attrs[storage.STATE_ATTR] = _tuner_state(trial, outcome, attrs)
        curve = [h.get("train_loss") for c in ctxs for h in c.history]
        if any(v is not None for v in curve):
            self.patience.call(lambda: storage.set_system_attrs(
                trial, {storage.TRAIN_LOSS_ATTR: curve}))
        if records is None:
            self.patience.call(lambda: storage.set_user_attrs_many([(trial, attrs)],
                                                                   finished=outcome.elsewhere))
        else:
            records.append((trial, attrs))
        if not outcome.broken_device:
            _free_device_cache(self.assets.device)
        stores = tuple(c.checkpoints for c in ctxs if c.checkpoints is not None)
        return dataclasses.replace(outcome, checkpoints=stores)

    # ---- same-shape trials trained as one (tuner.fuse) ------------------------------------
    def fuse_size(self) -> int:
        """How many trials this worker trains as one: 1 when the study cannot fuse; with
        ``auto``, the K with the most trials per second on this device (measured once)."""
        if self.fuse == "off" or self.spec.fuse_blocker(fixed_shape=False) is not None:
            return 1
        if isinstance(self.fuse, int):
            return self.fuse
        if getattr(self, "_auto_k", None) is None:
            import torch

            from tuner import fuse

            params = space.defaults(self.spec)
            if sp.fuse_key(params) is None:
                self._auto_k = 1
            else:
                bundle = self.assets.data()
                ctx = Context(device=torch.device(self.assets.device),
                              seed=self.spec.seed, max_epochs=self.spec.epochs, task=bundle.task,
                              metric=self.spec.metric_name, data=bundle,
                              build_model=self.assets.model_builder(bundle))
                self._auto_k, rates = fuse.choose_k(params, ctx)
                self.fuse_rates = rates
        return self._auto_k

    def fusable(self, trial: optuna.Trial) -> bool:
        """Whether ``trial`` may join a fused group: a fresh trial (a retry or a promotion
        resumes from its checkpoint, alone)."""
        return not (storage.is_retry(trial) or storage.is_promotion(trial))

    def run_group(self, trials: list[optuna.Trial]) -> list[Outcome]:
        """Train ``trials`` (fresh trials of this study): those that share a shape as one
        stacked model (:func:`tuner.fuse.fit_fused`), the others alone. One outcome each,
        in order."""
        from tuner import fuse

        if len(trials) == 1:
            return [self.run(trials[0])]
        outcomes: dict[int, Outcome] = {}
        fresh = [t for t in trials if self.fusable(t)]
        for t in trials:
            if t not in fresh:  # a retry or a promotion resumes from its checkpoint, alone
                outcomes[t.number] = self.run(t)
        # the members' lineage and worker attrs in one transaction, their draws one by one
        # (each sees the ones before it: TPE's constant liar), then one read of the study
        # for every member's look at repeats
        self.patience.call(lambda: storage.set_user_attrs_many(
            [(t, self._start_attrs(t)) for t in fresh]))
        _reset_peak_memory(self.assets.device)
        drawn: list[tuple[optuna.Trial, dict[str, Any], float]] = []
        for t in fresh:
            begun = time.perf_counter()
            try:
                drawn.append((t, self._draw(t), begun))
            except Exception as e:  # noqa: BLE001 - stopped, or a bad draw
                outcomes[t.number] = self._conclude(t, [], begun, partial(_reraise, e))
        group = frozenset(t.number for t in trials)
        seen = (self.patience.call(lambda: fresh[0].study.get_trials(deepcopy=False))
                if drawn and self.spec.dedup else None)
        ready: list[tuple[optuna.Trial, dict[str, Any], dict[str, float], float]] = []
        for t, params, begun in drawn:
            try:
                ready.append((t, params, self._vet(t, params, group, seen), begun))
            except Exception as e:  # noqa: BLE001 - a repeat, infeasible, or stopped
                outcomes[t.number] = self._conclude(t, [], begun, partial(_reraise, e))
        groups: dict[Any, list[int]] = {}
        for j, (_, params, _, _) in enumerate(ready):
            key = sp.fuse_key(params)
            groups.setdefault(key if key is not None else ("alone", j), []).append(j)
        for members in groups.values():
            if len(members) == 1:  # shares no shape: trained alone, as ever
                t, params, measured, begun = ready[members[0]]
                alone: list[Context] = []
                outcomes[t.number] = self._conclude(
                    t, alone, begun, partial(self._fit_alone, t, params, measured, alone))
                continue
            ctxs = [self.context(ready[j][0], storage.lineage(ready[j][0])) for j in members]
            together = _GroupReports(self.patience)
            for c in ctxs:  # kept on the trial: how many trained as one with it
                c.info["fused"] = len(members)
                if isinstance(c.reporter, _TrialReporter) and c.reporter.joins_a_group():
                    c.reporter.together = together
            fit_start = time.perf_counter()
            try:
                results: list[Any] = fuse.fit_fused([ready[j][1] for j in members], ctxs)
            except (KeyboardInterrupt, DatabaseUnreachable):
                raise
            except Exception as e:  # noqa: BLE001 - the group failed: each member says why
                results = [e] * len(members)
            fit_s = time.perf_counter() - fit_start
            records: list[tuple[optuna.Trial, dict[str, Any]]] = []
            for j, ctx, result in zip(members, ctxs, results, strict=True):
                t, params, measured, begun = ready[j]
                outcomes[t.number] = self._conclude(
                    t, [ctx], begun,
                    partial(_result, result, params, measured, fit_s / len(members)), records)
            # the members' closing attrs in one statement, not one transaction each
            # (a member finished from outside meanwhile keeps them too)
            self.patience.call(partial(storage.set_user_attrs_many, records, finished=True))
        return [outcomes[t.number] for t in trials]

    def _fit_alone(self, trial: optuna.Trial, params: dict[str, Any], measured: dict[str, float],
                   ctxs: list[Context]) -> tuple[Any, dict[str, Any], dict[str, float], float]:
        """A drawn trial of a group that shares its shape with no other: fit alone."""
        from tuner import train

        ctx = self.context(trial, storage.lineage(trial))
        ctxs.append(ctx)
        fit_start = time.perf_counter()
        raw = (self.assets.trainer or train.fit)(params, ctx)
        return raw, params, measured, time.perf_counter() - fit_start

    def _reuse_identical(self, trial: optuna.Trial, group: frozenset[int] = frozenset(),
                         seen: list[FrozenTrial] | None = None) -> None:
        """Raise :class:`_Repeat` with the earlier result when a finished trial (complete or
        pruned) had exactly these params: grid and categorical spaces, and several workers
        asking at once, propose the same configuration again. ``dedup: false`` turns it off
        (when seeds vary, say). While an earlier-numbered trial with these params is still
        running, wait for it (polling; the heartbeat keeps this trial alive): if it finishes,
        its result is reused; if it fails (its worker died), this trial trains. ``seen``: the
        study's trials as the caller just read them, for the first look."""
        mine, lineage = trial.params, storage.lineage(trial)
        # an earlier trial asked at the same moment may not have drawn its params yet: give
        # it a moment to (else two workers asking at once would both train the same thing)
        unsure_until = time.monotonic() + DEDUP_DRAW_WAIT_S
        while True:
            ts = seen if seen is not None else self.patience.call(
                lambda: trial.study.get_trials(deepcopy=False))
            seen = None  # a second look (waiting for a running twin) reads the study again
            # a fused group's other members train together with this one: waiting for one
            # of them would wait for ever
            ts = [t for t in ts if t.number not in group or t.state != TrialState.RUNNING]
            # a retry or an ASHA continuation carries on its own lineage: not a repeat
            same = [t for t in ts if t.number != trial.number and t.params == mine
                    and storage.lineage(t) != lineage]
            # an ASHA rung segment that paused is not a result: it may yet be promoted
            done = [t for t in same if t.state == TrialState.COMPLETE
                    or (t.state == TrialState.PRUNED and not storage.is_paused(t))]
            undrawn = bool(mine) and time.monotonic() < unsure_until and any(
                t.state == TrialState.RUNNING and t.number < trial.number and not t.params
                for t in ts)
            if done or not (undrawn or any(t.state == TrialState.RUNNING
                                           and t.number < trial.number for t in same)):
                break
            if self.stop.wait(DEDUP_POLL_S):
                raise StopRequested
        same = done
        if not same:
            return
        first = min(same, key=lambda t: t.user_attrs.get(REPEAT_ATTR, t.number))
        original = first.user_attrs.get(REPEAT_ATTR, first.number)
        attrs: dict[str, Any] = {REPEAT_ATTR: original}
        for key in ("metrics", INFEASIBLE_ATTR):
            if key in first.user_attrs:
                attrs[key] = first.user_attrs[key]
        self.patience.call(lambda: storage.set_user_attrs(trial, attrs))
        for name, violation in first.constraints.items():
            trial.set_constraint(name, violation)
        why = f"repeat of trial {original}: its result is reused"
        if first.state == TrialState.COMPLETE and first.values:
            values = tuple(first.values)
            value = values[self.spec.objective_names.index(self.spec.metric_name)
                           if len(values) > 1 else 0]
            raise _Repeat(Outcome(TrialState.COMPLETE, value, values=values,
                                  repeat_of=original))
        raise _Repeat(Outcome(TrialState.PRUNED, fail_reason=why, repeat_of=original))

    def _pruned(self, trial: optuna.Trial, ctxs: list[Context], e: TrialPruned) -> Outcome:
        """PRUNED; with ASHA or PBT, a finite report at a rung's (generation's) epoch pauses
        the trial instead (the rung pruner prunes nowhere else): marked ``paused_at``, its
        checkpoint kept; PBT also snapshots it as of that epoch, for members that exploit it."""
        last = ctxs[-1].history[-1] if ctxs and ctxs[-1].history else None
        sched, lin = schedules.of(self.spec), storage.lineage(trial)
        if last is not None and sched.verdict(lin, int(last["epoch"]), last["value"],
                                              pruned=True) == schedules.Verdict.PAUSE:
            epoch = int(last["epoch"])
            if epoch in sched.snapshot_epochs(lin):
                try:
                    self._snapshot(lin, epoch)
                except (ValueError, CheckpointUnwritable) as err:
                    return Outcome(TrialState.FAIL, fail_reason=fail_reason(err))
            self.patience.call(lambda: storage.set_user_attrs(trial, {storage.PAUSED_ATTR: epoch}))
            return Outcome(TrialState.PRUNED, fail_reason=f"paused at rung epoch {epoch}",
                           paused=True)
        return Outcome(TrialState.PRUNED, fail_reason=str(e))

    # ---- checkpoint files ---------------------------------------------------------------
    def _store(self, lineage: int, generation: int | None = None) -> CheckpointStore:
        suffix = "" if generation is None else f"-gen{generation}"
        return CheckpointStore(inside_folder(self.checkpoint_dir, self.spec.name)
                               / f"trial-{lineage}{suffix}.pt")

    def _snapshot(self, lineage: int, epoch: int) -> None:
        """PBT: keep the member's checkpoint as of generation ``epoch`` (it goes on, and may
        overwrite its own file, before a member that exploits it copies the weights)."""
        state = self._store(lineage).load()
        if state is None or int(state.get("epoch", -1)) != epoch:
            raise ValueError(
                f"trial-{lineage}'s checkpoint is not at epoch {epoch}, where PBT pauses it; a "
                "trainer must save its checkpoint (with its epoch) before each report")
        self._store(lineage, epoch).save(state)

    def _exploit(self, trial: optuna.Trial, lineage: int) -> None:
        """PBT: a continuation that exploits a donor starts from the donor's weights and
        optimizer state as of the generation (its snapshot), keeping its own learning curve.
        Idempotent: a retry that already trained past the generation keeps its own file."""
        if (source := schedules.of(self.spec).weights_from(trial)) is None:
            return
        donor_lineage, g = source
        own = self._store(lineage)
        mine = own.load()
        if mine is not None and int(mine.get("epoch", 0)) > g:
            return
        donor = self._store(donor_lineage, g).load()
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

    def drop_snapshots(self) -> None:
        """PBT, once the study is over: delete every generation snapshot (unless checkpoints
        are kept), and the half-written checkpoints of workers killed while saving one: no
        member runs or waits any more, so no live worker is writing them."""
        if self.keep_checkpoints:
            return
        folder = inside_folder(self.checkpoint_dir, self.spec.name)
        for pattern in ("trial-*-gen*.pt", ".tmp-*.pt"):
            for f in folder.glob(pattern) if folder.is_dir() else []:
                f.unlink(missing_ok=True)

    def drop_checkpoint(self, lineage: int) -> None:
        """Delete the checkpoint of a lineage that will never run again (a retired pause)."""
        self._store(lineage).delete()

    def _elsewhere(self, trial: optuna.Trial, ctxs: list[Context]) -> Outcome:
        """The outcome of a trial finished from outside while it ran: the state it was given
        there, and why its worker stopped it."""
        state = self.patience.call(lambda: storage.state(trial.study, trial))
        epochs = max((int(h["epoch"]) for c in ctxs for h in c.history), default=0)
        return Outcome(state, fail_reason=(
            f"finished from outside as {state.name} while it ran (optuna-dashboard's buttons "
            f"or another process's tell); its worker stopped it after epoch {epochs}"),
            elsewhere=True)

    def _failed(self, trial: optuna.Trial, e: Exception) -> Outcome:
        """The outcome of a trial that raised: out of GPU memory is infeasible (PRUNED, with
        its peak memory, and a violated constraint for the sampler), not a failure; a
        device-side assert fails the trial and marks the process as broken."""
        reason = fail_reason(e)
        if is_out_of_memory(e):
            peak = _peak_memory(self.assets.device)
            attrs: dict[str, Any] = {INFEASIBLE_ATTR: "out of GPU memory"}
            if peak is not None:
                attrs["peak_memory_mib"] = round(peak / 2**20, 1)
                reason = f"out of GPU memory (peak {peak / 2**30:.2f} GiB): {reason}"
            storage.set_user_attrs(trial, attrs)
            # a violated constraint: TPE (and the other constrained samplers) rank it below
            # every feasible trial and steer away from its region
            trial.set_constraint(MEMORY_CONSTRAINT, 1.0)
            return Outcome(TrialState.PRUNED, fail_reason=reason[:FAIL_REASON_CHARS])
        if is_device_assert(e):
            return Outcome(TrialState.FAIL, fail_reason=reason, broken_device=True)
        return Outcome(TrialState.FAIL, fail_reason=reason)

    def _run_folds(self, trial: optuna.Trial, lineage: int, params: dict[str, Any],
                   fit: Callable[..., float], ctxs: list[Context]) -> float:
        """K-fold: the trial's score is the mean over folds, reported as folds finish (step
        i is the mean of the first i folds). A retry takes the folds its curve already has
        from the curve and trains the rest."""
        done = _fold_scores(trial) if storage.is_retry(trial) else []
        scores = []
        # the running mean goes where an epoch's report goes: the primary curve of a
        # multi-objective study (Optuna's own report refuses there), held through an outage
        reporter = _TrialReporter(trial, self.stop, self.on_epoch, True, self._primary(),
                                  self.patience)
        for fold in range(self.spec.kfold or 0):
            ctx = self.context(trial, lineage, fold=fold, prune=False)
            ctxs.append(ctx)  # even for a fold scored already: its checkpoint is cleaned up
            if fold < len(done):
                scores.append(done[fold])
                continue
            scores.append(float(fit(params, ctx)))
            mean = sum(scores) / len(scores)
            if reporter.report(fold + 1, mean, {}):
                raise TrialPruned(f"pruned after fold {fold + 1}")
            if self.stop.is_set() and fold + 1 < (self.spec.kfold or 0):
                raise StopRequested
        reporter.flush()
        if self.spec.stop.terminator:  # the statistical error of the trial, for the terminator
            from optuna.terminator import report_cross_validation_scores

            with warnings.catch_warnings():  # "deprecated" in Optuna 5: tuner pins it
                warnings.simplefilter("ignore", FutureWarning)
                self.patience.call(lambda: report_cross_validation_scores(trial, scores))
        return sum(scores) / len(scores)

    def _record(self, trial: optuna.Trial, ctxs: list[Context], start: float,
                fail_reason: str | None) -> None:
        attrs = self._closing_attrs(trial, ctxs, start, fail_reason)
        self.patience.call(lambda: storage.set_user_attrs(trial, attrs))

    def _closing_attrs(self, trial: optuna.Trial, ctxs: list[Context], start: float,
                       fail_reason: str | None) -> dict[str, Any]:
        """What a trial keeps once it ends: wall time, device, seed, epochs, versions, its
        train-loss curve, what its loop put in ``ctx.info``, why it failed."""
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
            # the last epoch's in the user attrs (one narrow cell in optuna-dashboard's
            # table); the curve is a system attr (_conclude), for the report
            attrs["train_loss"] = next((h["train_loss"] for h in reversed(history)
                                        if h.get("train_loss") is not None), None)
        if fail_reason:
            attrs["fail_reason"] = fail_reason
        return attrs

    def cleanup(self, outcome: Outcome) -> None:
        """Delete a finished trial's checkpoints (call after its result is stored: until then
        a retry elsewhere may still need them). Interrupted trials keep theirs to resume."""
        if outcome.interrupted or outcome.paused or outcome.stopped_by_user:
            return
        if self.keep_checkpoints and outcome.state == TrialState.COMPLETE:
            return
        for store in outcome.checkpoints:
            store.delete()


def _tuner_state(trial: optuna.Trial, outcome: Outcome, attrs: Mapping[str, Any]) -> str:
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
    if (trial.user_attrs.get(storage.PBT_ATTR) or {}).get("donor") is not None:
        return "exploited"
    if outcome.paused:
        return "paused"
    if outcome.state == TrialState.COMPLETE and attrs.get("fused"):
        return "fused"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(
        outcome.state, "failed")


def _cuda(device: str) -> bool:
    import torch

    return device.startswith("cuda") and torch.cuda.is_available()


def _reset_peak_memory(device: str) -> None:
    if _cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_memory(device: str) -> int | None:
    if not _cuda(device):
        return None
    import torch

    return int(torch.cuda.max_memory_allocated())


def _free_device_cache(device: str) -> None:
    """Between trials, hand the allocator's cached blocks back: with several workers on one
    GPU, each would otherwise keep its largest trial's peak reserved."""
    if _cuda(device):
        import gc

        import torch

        gc.collect()  # the trial's model and optimizer, if a cycle still holds them
        torch.cuda.empty_cache()


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


def _reraise(e: BaseException) -> Any:
    raise e


def _result(result: Any, params: dict[str, Any], measured: dict[str, float],
            fit_s: float) -> tuple[Any, dict[str, Any], dict[str, float], float]:
    """A fused member's result as an ``attempt`` gives it: its exception is raised."""
    if isinstance(result, BaseException):
        raise result
    return result, params, measured, fit_s
