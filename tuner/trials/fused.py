"""Same-shape trials trained as one stacked model (``fuse:``, :mod:`tuner.training.fuse`): how many a
worker takes at once (:func:`fuse_size`), which may join (:func:`fusable`), running the
group (:func:`run_group`: each member drawn, vetted and concluded by the runner's
lifecycle, the fit shared), and their epoch reports written together
(:class:`GroupReports`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from tuner import config as sp
from tuner import storage
from tuner.config import space
from tuner.errors import DatabaseUnreachable
from tuner.training.context import Context
from tuner.trial_schema import FUSED_ATTR
from tuner.trials import contexts
from tuner.trials.failures import finished_elsewhere
from tuner.trials.reporter import TrialReporter

if TYPE_CHECKING:
    from tuner.trials.outcome import Outcome
    from tuner.trials.runner import TrialRunner


class GroupReports:
    """The reports of a fused group's members after an epoch, written together: every
    member's intermediate values in one transaction (:func:`tuner.storage.report_many`) and
    the pruning checks against one read of the study (:func:`tuner.storage.should_prune_many`),
    each member keeping its own curve and its own verdict. Through an outage it does what
    each member's :class:`TrialReporter` does alone: the reports are held and written
    later, in order (the next epoch's write, or the trial's flush), and no member is pruned
    while the database is unreachable; past the patience, :class:`DatabaseUnreachable`."""

    def __init__(self, patience: storage.Patience):
        self.patience = patience

    def report_many(self, reports: Sequence[tuple[Any, int, float, Mapping[str, float]]]
                    ) -> list[bool | Exception]:
        members: list[TrialReporter] = [r for r, _, _, _ in reports]
        for r, epoch, value, _ in reports:
            if r.on_epoch:
                r.on_epoch(r.trial.number, epoch, value)
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
        return [next(verdicts) if w else finished_elsewhere(r.trial, UpdateFinishedTrialError(
                    "its report was not written"))
                for r, w in zip(members, written, strict=True)]


def fuse_size(runner: TrialRunner) -> int:
    """How many trials the runner's worker trains as one: 1 when the study cannot fuse;
    with ``auto``, the K with the most trials per second on this device (measured once)."""
    spec = runner.spec
    if runner.fuse == "off" or spec.fuse_blocker(fixed_shape=False) is not None:
        return 1
    if isinstance(runner.fuse, int):
        return runner.fuse
    if runner.fuse_k is None:
        from tuner.training import fuse

        params = space.defaults(spec)
        if sp.fuse_key(params) is None:
            runner.fuse_k = 1
        else:
            ctx = contexts.build(runner.assets, runner.assets.data(), seed=spec.seed)
            runner.fuse_k, runner.fuse_rates = fuse.choose_k(params, ctx)
    return runner.fuse_k


def fusable(trial: optuna.Trial) -> bool:
    """Whether ``trial`` may join a fused group: a fresh trial (a retry or a promotion
    resumes from its checkpoint, alone)."""
    return not (storage.is_retry(trial) or storage.is_promotion(trial))


def run_group(runner: TrialRunner, trials: list[optuna.Trial]) -> list[Outcome]:
    """Train ``trials`` (fresh trials of this study): those that share a shape as one
    stacked model (:func:`tuner.training.fuse.fit_fused`), the others alone. One outcome each, in
    order."""
    if len(trials) == 1:
        return [runner.run(trials[0])]
    outcomes: dict[int, Outcome] = {}
    fresh = [t for t in trials if fusable(t)]
    for t in trials:
        if t not in fresh:  # a retry or a promotion resumes from its checkpoint, alone
            outcomes[t.number] = runner.run(t)
    # the members' lineage and worker attrs in one transaction, their draws one by one
    # (each sees the ones before it: TPE's constant liar), then one read of the study
    # for every member's look at repeats
    runner.start(fresh)
    drawn: list[tuple[optuna.Trial, dict[str, Any], float]] = []
    for t in fresh:
        begun = time.perf_counter()
        try:
            drawn.append((t, runner.draw(t), begun))
        except Exception as e:  # noqa: BLE001 - stopped, or a bad draw
            outcomes[t.number] = runner.conclude(t, [], begun, partial(_reraise, e))
    group = frozenset(t.number for t in trials)
    seen = (runner.patience.call(lambda: fresh[0].study.get_trials(deepcopy=False))
            if drawn and runner.spec.dedup else None)
    ready: list[tuple[optuna.Trial, dict[str, Any], dict[str, float], float]] = []
    for t, params, begun in drawn:
        try:
            ready.append((t, params, runner.vet(t, params, group, seen), begun))
        except Exception as e:  # noqa: BLE001 - a repeat, infeasible, or stopped
            outcomes[t.number] = runner.conclude(t, [], begun, partial(_reraise, e))
    groups: dict[Any, list[int]] = {}
    for j, (_, params, _, _) in enumerate(ready):
        key = sp.fuse_key(params)
        groups.setdefault(key if key is not None else ("alone", j), []).append(j)
    for members in groups.values():
        if len(members) == 1:  # shares no shape: trained alone, as ever
            t, params, measured, begun = ready[members[0]]
            alone: list[Context] = []
            outcomes[t.number] = runner.conclude(
                t, alone, begun, partial(runner.fit, t, params, measured, alone))
        else:
            _fit_together(runner, [ready[j] for j in members], outcomes)
    return [outcomes[t.number] for t in trials]


def _fit_together(runner: TrialRunner,
                  members: list[tuple[optuna.Trial, dict[str, Any], dict[str, float], float]],
                  outcomes: dict[int, Outcome]) -> None:
    """Train ``members`` as one stacked model and conclude each; their closing attrs are
    written in one statement."""
    from tuner.training import fuse

    ctxs = [runner.context(t) for t, _, _, _ in members]
    together = GroupReports(runner.patience)
    for c in ctxs:  # kept on the trial: how many trained as one with it
        c.info[FUSED_ATTR] = len(members)
        if isinstance(c.reporter, TrialReporter) and c.reporter.joins_a_group():
            c.reporter.together = together
    fit_start = time.perf_counter()
    try:
        results: list[Any] = fuse.fit_fused([params for _, params, _, _ in members], ctxs)
    except (KeyboardInterrupt, DatabaseUnreachable):
        raise
    except Exception as e:  # noqa: BLE001 - the group failed: each member says why
        results = [e] * len(members)
    fit_s = time.perf_counter() - fit_start
    for (t, params, measured, begun), ctx, result in zip(members, ctxs, results, strict=True):
        outcomes[t.number] = runner.conclude(
            t, [ctx], begun, partial(_result, result, params, measured, fit_s / len(members)))


def _reraise(e: BaseException) -> Any:
    raise e


def _result(result: Any, params: dict[str, Any], measured: dict[str, float],
            fit_s: float) -> tuple[Any, dict[str, Any], dict[str, float], float]:
    """A fused member's result as an ``attempt`` gives it: its exception is raised."""
    if isinstance(result, BaseException):
        raise result
    return result, params, measured, fit_s
