"""The ``tuner`` command line: the only module that prints and exits.

Heavy libraries (torch, optuna) are imported inside commands, so ``tuner --help`` is fast.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import secrets
import sys
import time
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tuner.api import DEFAULT_STORAGE, QUIET_WARNINGS
from tuner.errors import TunerError

if TYPE_CHECKING:
    import optuna

    from tuner.objective import Runtime
    from tuner.storage import Heartbeat
    from tuner.study import Handle

app = typer.Typer(
    name="tuner",
    help="Hyperparameter tuning for PyTorch: study files, pruning, SQL storage, many workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _quiet_library_warnings() -> None:
    # tuner drives heartbeats itself (not through Study.optimize) and knows which Optuna
    # features are experimental: these warnings say nothing actionable to a user
    warnings.filterwarnings("ignore", message=QUIET_WARNINGS)


def command(fn: F) -> F:
    """Register a command whose TunerErrors become one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TunerError as e:
            err.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return app.command()(wrapper)  # type: ignore[return-value]


# ---- shared options (read once here, passed down) ----------------------------------------
Storage = Annotated[str, typer.Option("--storage", envvar="TUNER_STORAGE",
                                      help="SQLAlchemy URL of the study database.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DataDir = Annotated[Path, typer.Option(envvar="TUNER_DATA_DIR", help="Where datasets live.")]
CkptDir = Annotated[Path | None, typer.Option(
    envvar="TUNER_CHECKPOINT_DIR",
    help="Per-epoch checkpoints; must be shared by all workers [default: beside the SQLite "
         "file, else ./tuner_checkpoints].")]
Trials = Annotated[int | None, typer.Option(
    min=1, help="Run this many more trials (whole study, all workers).")]
Timeout = Annotated[float | None, typer.Option(min=1, help="Stop starting trials after this many seconds.")]
Workers = Annotated[int, typer.Option(
    min=0, help="Worker processes on this machine (0: only create the study and its budget).")]
PerGpu = Annotated[int | None, typer.Option(min=1, help="Workers packed on each GPU.")]
HeartbeatS = Annotated[int, typer.Option(envvar="TUNER_HEARTBEAT", min=1, help="Seconds between heartbeats.")]
GraceS = Annotated[int, typer.Option(envvar="TUNER_GRACE_PERIOD", min=1,
                                     help="Seconds of silence before a trial's worker counts as dead.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
Keep = Annotated[bool, typer.Option(help="Keep the checkpoints of completed trials.")]
Download = Annotated[bool, typer.Option(envvar="TUNER_DOWNLOAD",
                                        help="Download missing torchvision datasets.")]


class Fmt(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _heartbeat(interval: int, grace: int) -> Heartbeat:
    from tuner.api import heartbeat

    return heartbeat(interval, grace)


def _open(url: str, hb: Heartbeat | None = None) -> optuna.storages.RDBStorage:
    from tuner.storage import open_storage

    return open_storage(url, hb)


def _runtime(storage: str, device: str, data_dir: Path, ckpt: Path | None, keep: bool,
             download: bool) -> Runtime:
    from tuner.api import make_runtime

    return make_runtime(storage, device, data_dir, ckpt, keep, download)


def _setup_logging(quiet: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def display_url(url: str) -> str:
    from tuner.storage import display_url as hide_password

    return hide_password(url)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


# ---- running ------------------------------------------------------------------------------
def _work(handle: Handle, storage_url: str, runtime: Runtime, hb: Heartbeat, workers: int,
          per_gpu: int | None, quiet: bool) -> None:
    """Run the study's remaining budget with ``workers`` workers on this machine."""
    from tuner import api
    from tuner.progress import ProgressView
    from tuner.status import snapshot

    snap = snapshot(handle, with_heartbeats=False)
    if workers == 0:
        out.print(f"study {handle.name} is ready (budget {snap.budget.target}); start workers "
                  f"with `tuner worker {handle.name} --storage {display_url(storage_url)}`")
        return
    if snap.budget.remaining == 0 and not snap.counts.get("WAITING") and not snap.running:
        out.print(f"study {handle.name}: budget spent ({snap.finished} trials finished); "
                  f"best {_fmt(snap.best_value)}. Pass --trials N to run more.")
        return
    view = ProgressView(out, handle.name, handle.spec.direction_name, handle.spec.epochs,
                        snap.finished, snap.budget.target, snap.best_value)
    with view if not quiet else _nullctx():
        if workers == 1:
            why = api.work(handle, runtime, hb, None if quiet else view.event).stopped_because
        else:
            api.run_workers(handle, storage_url, runtime, hb, workers, per_gpu,
                            poll=None if quiet else lambda: view.snapshot(snapshot(handle)))
            why = "done"
    _print_result(handle, why)


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _print_result(handle: Handle, why: str) -> None:
    from tuner.status import snapshot

    snap = snapshot(handle, with_heartbeats=False)
    c = snap.counts
    out.print(
        f"study {handle.name}: {snap.finished} finished ({c.get('COMPLETE', 0)} complete, "
        f"{c.get('PRUNED', 0)} pruned, {c.get('FAIL', 0)} failed)"
        + (f" — stopped, {c.get('WAITING', 0)} trial(s) left to resume from their checkpoints: "
           f"`tuner resume {handle.name}`" if why == "stopped" or c.get("WAITING") else "")
    )
    if snap.best_trial is not None:
        best = handle.study.trials[snap.best_trial]
        out.print(f"best {handle.spec.metric_name}: {_fmt(snap.best_value)} (trial "
                  f"{snap.best_trial}) {json.dumps(best.params)}")


@command
def run(
    file: Annotated[Path, typer.Argument(help="Study file (YAML), e.g. search_spaces/mnist_mlp.yaml.")],
    study: Annotated[str | None, typer.Option(help="Study name [default: the file's name:].")] = None,
    trials: Trials = None,
    timeout: Timeout = None,
    storage: Storage = DEFAULT_STORAGE,
    device: Device = "auto",
    seed: Annotated[int | None, typer.Option(help="Override the file's seed.")] = None,
    workers: Workers = 1,
    workers_per_gpu: PerGpu = None,
    force: Annotated[bool, typer.Option(help="Resume even if the file's space changed.")] = False,
    data_dir: DataDir = Path("data"),
    checkpoint_dir: CkptDir = None,
    keep_checkpoints: Keep = False,
    download: Download = True,
    heartbeat: HeartbeatS = 5,
    grace_period: GraceS = 20,
    quiet: Quiet = False,
) -> None:
    """Create a study from FILE, or resume it if it exists, and run trials."""
    from tuner import api

    spec = api.as_spec(file, study=study, seed=seed)
    _setup_logging(quiet)
    hb = _heartbeat(heartbeat, grace_period)
    runtime = _runtime(storage, device, data_dir, checkpoint_dir, keep_checkpoints, download)
    # the study's own code and data are checked before anything is written
    handle = api.open_study(spec, storage, runtime, hb=hb, force=force, trials=trials,
                            timeout=timeout)
    if not quiet:
        verb = "created" if handle.created else "resuming"
        out.print(f"{verb} study [bold]{spec.name}[/bold] in {display_url(storage)} on "
                  f"{runtime.device}")
    _work(handle, storage, runtime, hb, workers, workers_per_gpu, quiet)


@command
def resume(
    name: Annotated[str, typer.Argument(help="Study name.")],
    trials: Trials = None,
    timeout: Timeout = None,
    storage: Storage = DEFAULT_STORAGE,
    device: Device = "auto",
    workers: Workers = 1,
    workers_per_gpu: PerGpu = None,
    data_dir: DataDir = Path("data"),
    checkpoint_dir: CkptDir = None,
    keep_checkpoints: Keep = False,
    download: Download = True,
    heartbeat: HeartbeatS = 5,
    grace_period: GraceS = 20,
    quiet: Quiet = False,
) -> None:
    """Continue a study from the database alone (no study file needed)."""
    from tuner import api
    from tuner import study as st

    _setup_logging(quiet)
    hb = _heartbeat(heartbeat, grace_period)
    runtime = _runtime(storage, device, data_dir, checkpoint_dir, keep_checkpoints, download)
    handle = st.load(_open(storage, hb), name)
    api.check(handle.spec, runtime)  # before the budget grows
    if trials is not None or timeout is not None:
        st.add_budget(handle, trials, timeout)
    _work(handle, storage, runtime, hb, workers, workers_per_gpu, quiet)


@command
def worker(
    study: Annotated[str, typer.Argument(help="Study name, or a study file to create it from.")],
    storage: Storage = DEFAULT_STORAGE,
    device: Device = "auto",
    data_dir: DataDir = Path("data"),
    checkpoint_dir: CkptDir = None,
    keep_checkpoints: Keep = False,
    download: Download = True,
    worker_index: Annotated[int | None, typer.Option(
        help="Offsets the sampler seed [default: random, so workers started alike sample apart].")
    ] = None,
    heartbeat: HeartbeatS = 5,
    grace_period: GraceS = 20,
    quiet: Quiet = False,
) -> None:
    """Join a study as one worker, until its budget is spent. Given a study file, create the
    study first if nobody has (with the file's budget); never adds budget."""
    from tuner import api
    from tuner import study as st
    from tuner import worker as w

    _setup_logging(quiet)
    if worker_index is None:
        worker_index = secrets.randbelow(1 << 30)
    hb = _heartbeat(heartbeat, grace_period)
    runtime = _runtime(storage, device, data_dir, checkpoint_dir, keep_checkpoints, download)
    if study.endswith((".yaml", ".yml")):
        handle = api.open_study(api.as_spec(study), storage, runtime, hb=hb,
                                worker_index=worker_index)
    else:
        handle = st.load(_open(storage, hb), study, worker_index=worker_index)
    on_event = None
    if not quiet:
        def on_event(e: w.Event) -> None:
            if e.kind == "finished":
                out.print(f"trial {e.trial}: {e.state} {_fmt(e.value)}")
    wk = w.Worker(handle, runtime, heartbeat=hb, on_event=on_event)
    with w.graceful_signals(runtime.stop):
        summary = wk.run()
    if not quiet:
        out.print(f"worker done: {summary.trials} trials ({summary.stopped_because})")


# ---- inspecting ---------------------------------------------------------------------------
@command
def studies(storage: Storage = DEFAULT_STORAGE) -> None:
    """Every study in the storage: trials by state, best value, last activity."""
    from tuner.status import studies as rows

    table = Table()
    table.add_column("study", no_wrap=True)
    for column in ("complete", "pruned", "failed", "running", "best", "direction", "last activity"):
        table.add_column(column)
    for r in rows(_open(storage)):
        c = r.counts
        table.add_row(r.name, str(c.get("COMPLETE", 0)), str(c.get("PRUNED", 0)),
                      str(c.get("FAIL", 0)), str(c.get("RUNNING", 0)), _fmt(r.best_value),
                      r.direction, r.last_activity.isoformat(sep=" ", timespec="seconds")
                      if r.last_activity else "—")
    out.print(table)


@command
def trials(
    name: Annotated[str, typer.Argument(help="Study name.")],
    format: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.table,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """The trials of a study, as a table, CSV or JSON."""
    from tuner import study as st
    from tuner.status import trial_rows

    rows = trial_rows(st.load(_open(storage), name).study)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if format == Fmt.table:  # the essentials first; every column is in csv and json
        skip = {"started", "fail_reason", "retry_of"}
        columns = [c for c in columns if c not in skip]
    if format == Fmt.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
    elif format == Fmt.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(box=None, header_style="bold")
        for c in columns:
            header = {"number": "#", "duration_s": "secs"}.get(c, c.removeprefix("params_"))
            table.add_column(header, no_wrap=c in ("number", "state", "value"))
        for r in rows:
            table.add_row(*[_cell(r.get(c)) for c in columns])
        out.print(table)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@command
def best(name: Annotated[str, typer.Argument(help="Study name.")],
         storage: Storage = DEFAULT_STORAGE,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The best trial: its value, params, and the test score of its retrain if there is one."""
    from tuner import study as st
    from tuner.status import snapshot

    handle = st.load(_open(storage), name)
    snap = snapshot(handle, with_heartbeats=False)
    if snap.best_trial is None:
        raise TunerError(f"study {name!r} has no completed trial yet; run `tuner resume {name}`")
    t = handle.study.trials[snap.best_trial]
    result: dict[str, Any] = {"study": name, "trial": t.number, "metric": handle.spec.metric_name,
                              "value": t.value, "params": t.params,
                              "epochs": t.user_attrs.get("epochs_run")}
    retrained = handle.study.user_attrs.get(f"retrain.{t.number}")
    if retrained:
        result["test"] = retrained
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    out.print(f"best trial {t.number} of {name}: {handle.spec.metric_name} = {_fmt(t.value)}"
              f" after {result['epochs']} epochs")
    for k, v in t.params.items():
        out.print(f"  {k}: {v}")
    if retrained:
        metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in retrained.get("metrics", {}).items())
        out.print(f"test set (retrained): {metrics}")


@command
def status(name: Annotated[str, typer.Argument(help="Study name.")],
           storage: Storage = DEFAULT_STORAGE) -> None:
    """Live view of a study: workers and their trials, counts, best, time left."""
    from tuner import study as st
    from tuner.status import snapshot

    handle = st.load(_open(storage), name)
    snap = snapshot(handle)
    b = snap.budget
    c = snap.counts
    out.print(f"study [bold]{name}[/bold]: {snap.finished}/{b.target if b.target is not None else '∞'} "
              f"finished · complete {c.get('COMPLETE', 0)} · pruned {c.get('PRUNED', 0)} · failed "
              f"{c.get('FAIL', 0)} · waiting {c.get('WAITING', 0)} · running {c.get('RUNNING', 0)}")
    out.print(f"best {handle.spec.metric_name}: {_fmt(snap.best_value)}"
              + (f" (trial {snap.best_trial})" if snap.best_trial is not None else ""))
    if snap.eta_s is not None:
        out.print(f"estimated time left: {snap.eta_s / 60:.1f} min")
    if b.deadline is not None:
        out.print(f"deadline in {max(0.0, b.deadline - time.time()) / 60:.1f} min")
    if snap.running:
        table = Table("trial", "epoch", "last value", "host", "pid", "device", "heartbeat")
        for r in snap.running:
            table.add_row(str(r.number), f"{r.epoch}/{handle.spec.epochs}", _fmt(r.last_value),
                          r.host or "?", str(r.pid or "?"), r.device or "?",
                          "—" if r.heartbeat_age_s is None else f"{r.heartbeat_age_s:.0f}s ago")
        out.print(table)
    else:
        out.print("no trial is running")


@command
def check(file: Annotated[Path, typer.Argument(help="Study file (YAML).")]) -> None:
    """Validate a study file and print its search space."""
    from tuner.space import describe
    from tuner.spec import load_spec

    spec = load_spec(file)
    out.print(f"[green]ok[/green] {file}: study [bold]{spec.name}[/bold] — data {spec.data or 'its own'}, "
              f"model {spec.model}{', trainer ' + spec.trainer if spec.trainer else ''}, "
              f"{spec.direction_name} {spec.metric_name}, up to {spec.epochs} epochs, "
              f"sampler {spec.sampler.name}, pruner {spec.pruner.name}, {spec.trials} trials")
    table = Table("parameter", "kind", "range", "when")
    for row in describe(spec):
        table.add_row(*row)
    out.print(table)


@command
def delete(name: Annotated[str, typer.Argument(help="Study name.")],
           storage: Storage = DEFAULT_STORAGE,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Delete a study and all its trials."""
    from tuner import study as st

    url_storage = _open(storage)
    handle = st.load(url_storage, name, wait_s=0)
    n = len(handle.study.trials)
    if not yes and not typer.confirm(f"Delete study {name!r} and its {n} trials?", default=False):
        raise typer.Exit(1)
    st.delete(url_storage, name)
    out.print(f"deleted study {name} ({n} trials)")


def main() -> None:
    app()


# commands for after the search (dashboard, report, retrain) live beside this module
from tuner import cli_report  # noqa: E402, F401  (registers its commands on ``app``)

# `tuner launch slurm|k8s` lives beside this module too
from tuner.cli_launch import launch_app  # noqa: E402

app.add_typer(launch_app, name="launch")
