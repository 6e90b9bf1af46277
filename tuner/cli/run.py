"""``tuner run``, ``resume`` and ``worker``: prepare through the API, show progress, say how it ended."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tuner import gate
from tuner.cli._common import (
    BudgetHours,
    PerGpu,
    Quiet,
    StudyArg,
    Timeout,
    Trials,
    Workers,
    _escape,
    _fmt,
    _setup_logging,
    _study_name,
    command,
    display_url,
    exit_stalled,
    out,
    study_file,
    with_settings,
)
from tuner.settings import Settings  # at run time: typer reads the commands' annotations

if TYPE_CHECKING:
    from tuner.api import Prepared


# ---- running ------------------------------------------------------------------------------
def _work(prepared: Prepared, workers: int, per_gpu: int | None, quiet: bool) -> None:
    """Run the prepared study's remaining budget with ``workers`` workers on this machine,
    showing progress, then say how it ended."""
    from tuner import api
    from tuner.cli.progress import ProgressView
    from tuner.status import snapshot

    handle = prepared.handle
    snap = snapshot(handle, with_heartbeats=False)
    if workers == 0:
        out().print(f"study {handle.name} is ready (budget {snap.budget.target}); start workers "
                    f"with `tuner worker {handle.name} --storage "
                    f"{display_url(prepared.settings.storage)}`", highlight=False, soft_wrap=True)
        return
    b = snap.budget
    if (b.stopped or b.hours_spent_out) and not snap.counts.get("WAITING") and not snap.running:
        why = (f"stopped early ({b.stopped})" if b.stopped
               else f"device-time budget spent ({b.hours_spent:.3g} h)")
        from tuner.stopping import GRID_EXHAUSTED

        go_on = ("Search another grid as a new study (--study NEW_NAME)"
                 if (b.stopped or "").startswith(GRID_EXHAUSTED)
                 else "Pass --trials N or --budget-hours H to go on")
        out().print(f"study {handle.name}: {why}; {snap.finished} trials finished, best "
                    f"{_fmt(snap.best_value)}. {go_on}.", highlight=False, soft_wrap=True)
        return
    if b.expired() and not snap.running:
        # the deadline passed: nothing starts, not even a waiting retry or continuation
        waiting = snap.counts.get("WAITING", 0)
        out().print(f"study {handle.name}: its time budget ran out; {snap.finished} trials "
                    f"finished" + (f", {waiting} waiting" if waiting else "") + ", best "
                    f"{_fmt(snap.best_value)}. Pass --timeout SECONDS (or --trials N) to go on.",
                    highlight=False, soft_wrap=True)
        return
    if snap.budget.remaining == 0 and not snap.counts.get("WAITING") and not snap.running:
        out().print(f"study {handle.name}: budget spent ({snap.finished} trials finished); "
                    f"best {_fmt(snap.best_value)}. Pass --trials N to run more.")
        return
    if quiet:
        result = api.go(prepared, workers=workers, workers_per_gpu=per_gpu,
                        on_stall=exit_stalled)
    else:
        view = ProgressView(out(), handle.name, handle.spec.metric_name,
                            handle.spec.direction_name, handle.spec.epochs, snap.finished,
                            snap.budget.target, snap.best_value, snap.best_trial)
        with view:
            result = api.go(prepared, workers=workers, workers_per_gpu=per_gpu,
                            on_event=view.event,
                            on_poll=lambda: view.snapshot(snapshot(handle)),
                            on_stall=exit_stalled)
    _print_result(prepared, result.stopped_because or "done")


def _each(workers: int) -> str:
    return f"{workers} workers, each " if workers > 1 else ""


def _print_result(prepared: Prepared, why: str) -> None:
    from tuner.status import snapshot
    from tuner.storage import USER_STOP

    handle = prepared.handle
    snap = snapshot(handle, with_heartbeats=False)
    c = snap.counts
    out().print(
        f"study {handle.name}: {snap.finished} finished ({c.get('COMPLETE', 0)} complete, "
        f"{c.get('PRUNED', 0)} pruned, {c.get('FAIL', 0)} failed)"
        + (f" — stopped, {c.get('WAITING', 0)} trial(s) left to resume from their checkpoints: "
           + (f"`tuner continue {handle.name}`, then "
              if snap.budget.stopped == USER_STOP else "")
           + f"`tuner resume {handle.name}"
           # past the deadline nothing starts, a waiting continuation neither: say how to go on
           + (" --timeout SECONDS`" if snap.budget.expired() else "`")
           if why == "stopped" or c.get("WAITING") else "")
    )
    if snap.budget.stopped is not None:
        out().print(f"stopped early: {snap.budget.stopped}", highlight=False, soft_wrap=True)
    elif snap.budget.hours_spent_out:
        out().print(f"device-time budget spent: {snap.budget.hours_spent:.3g} h", highlight=False)
    if snap.best_trial is not None:
        best = handle.study.trials[snap.best_trial]
        out().print(f"best {handle.spec.metric_name}: {_fmt(snap.best_value)} (trial "
                    f"{snap.best_trial}) {json.dumps(best.params)}", highlight=False)


@command
@with_settings
def run(
    file: Annotated[Path, typer.Argument(
        help="Study file (YAML), e.g. search_spaces/mnist_mlp.yaml.", callback=study_file)],
    study: Annotated[str | None, typer.Option(
        help="Study name [default: the file's name].", callback=_study_name)] = None,
    trials: Trials = None,
    timeout: Timeout = None,
    budget_hours: BudgetHours = None,
    seed: Annotated[int | None, typer.Option(
        min=0, max=gate.MAX_SEED, help="Override the file's seed.")] = None,
    workers: Workers = 1,
    workers_per_gpu: PerGpu = None,
    force: Annotated[bool, typer.Option(help="Resume even if the file's space changed.")] = False,
    warm_from: Annotated[str | None, typer.Option(
        "--from", callback=_study_name,
        help="Start a new study from an earlier one: its finished trials that fit.")
    ] = None,
    from_url: Annotated[str | None, typer.Option(
        "--from-storage", help="The storage of the --from study [default: --storage].")] = None,
    enqueue_top: Annotated[int | None, typer.Option(
        min=1, help="With --from: enqueue its K best configurations as the first trials.")
    ] = None,
    quiet: Quiet = False,
    *,
    settings: Settings,
) -> None:
    """Create a study from FILE, or resume it if it exists, and run trials."""
    from tuner import api

    spec = api.as_spec(file, study=study, seed=seed)
    _setup_logging()
    # the study's own code and data are checked before anything is written
    prepared = api.prepare(spec, settings, force=force, trials=trials, timeout=timeout,
                           local_workers=workers, budget_hours=budget_hours,
                           warm_from=warm_from, from_url=from_url,
                           enqueue_top=enqueue_top)
    if not quiet:
        verb = "created" if prepared.handle.created else "resuming"
        out().print(f"{verb} study [bold]{_escape(prepared.handle.name)}[/bold] in "
                    f"{_escape(display_url(settings.storage))} on {settings.device}, "
                    f"{_each(workers)}{_escape(str(prepared.threads))}",
                    highlight=False, markup=True)
    _work(prepared, workers, workers_per_gpu, quiet)


@command
@with_settings
def resume(
    name: StudyArg,
    trials: Trials = None,
    timeout: Timeout = None,
    budget_hours: BudgetHours = None,
    workers: Workers = 1,
    workers_per_gpu: PerGpu = None,
    quiet: Quiet = False,
    *,
    settings: Settings,
) -> None:
    """Continue a study from the database alone (no study file needed)."""
    from tuner import api

    _setup_logging()
    prepared = api.prepare_existing(name, settings, trials=trials, timeout=timeout,
                                    local_workers=workers, budget_hours=budget_hours)
    _work(prepared, workers, workers_per_gpu, quiet)


@command
@with_settings
def worker(
    study: Annotated[str, typer.Argument(help="Study name, or a study file to create it from.")],
    worker_index: Annotated[int | None, typer.Option(
        min=0, max=gate.MAX_WORKER_INDEX,
        help="This worker's number in its launch (Slurm, Kubernetes); sampling does not depend "
             "on it: each draw is seeded from the study seed and the trial number.")
    ] = None,
    quiet: Quiet = False,
    *,
    settings: Settings,
) -> None:
    """Join a study as one worker, until its budget is spent. Given a study file, create the
    study first if nobody has (with the file's budget); never adds budget."""
    from tuner import api

    _setup_logging()
    if worker_index is None:
        worker_index = secrets.randbelow(1 << 30)
    on_event = None
    if not quiet:
        def on_event(e: Any) -> None:
            if e.kind == "finished":
                out().print(f"trial {e.trial}: {e.state} {_fmt(e.value)}", highlight=False)
    prepared = api.prepare_work(study, settings, worker_index=worker_index)
    if not quiet:
        out().print(f"worker on {settings.device}, {prepared.threads}", highlight=False)
    result = api.go(prepared, on_event=on_event, on_stall=exit_stalled)
    if not quiet:
        out().print(f"worker done: {result.trials_run} trials ({result.stopped_because})",
                    highlight=False, soft_wrap=True)


