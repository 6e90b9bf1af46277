"""What every command module of the CLI shares: the Typer app, the error handling of
:func:`command`, the options, and the consoles.

The settings options (storage, device, folders, heartbeat) are declared once, in
:data:`SETTINGS`, and reach a command as one :class:`~tuner.settings.Settings`
(:func:`with_settings`). Heavy libraries (torch, optuna, rich) are imported inside
commands, so ``tuner --help`` is fast.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

try:  # Typer 0.29 on carries its own copy of Click: its exceptions, not the click package's
    from typer._click import Context
    from typer._click import exceptions as click
except ImportError:  # an older Typer: Click itself
    import click.exceptions as click  # type: ignore[no-redef]
    from click import Context  # type: ignore[assignment]
from typer.core import TyperGroup

from tuner import gate
from tuner.errors import TunerError
from tuner.settings import DEFAULT_DATA_DIR, DEFAULT_URL, Heartbeat, Settings

if TYPE_CHECKING:
    import optuna
    from rich.console import Console


QUIET_WARNINGS = r".*(experimental|Heartbeat of storage).*"
DEFAULT_STORAGE = DEFAULT_URL
DB_PATIENCE = Settings.db_patience
DAY = 24 * 3600  # the longest wait an option takes is counted in days, never unbounded

class _OneLineUsage(click.ClickException):
    """A usage error (unknown option, bad value, missing argument) as one line on stderr,
    naming the option and where to read about it, with Click's exit code 2."""

    exit_code = 2

    def __init__(self, error: click.UsageError):
        where = error.ctx.command_path if error.ctx is not None else "tuner"
        super().__init__(f"{' '.join(error.format_message().split())} (see `{where} --help`)")

    def show(self, file: Any = None) -> None:
        err().print(f"[red]error:[/red] {_escape(self.message)}", markup=True, highlight=False,
                    soft_wrap=True)


class _Group(TyperGroup):
    """The app's Click group: usage errors become :class:`_OneLineUsage` (Click would print
    Usage, Try, a blank line and Error). A bare ``tuner`` or ``tuner launch`` still shows help."""

    def make_context(self, *args: Any, **kwargs: Any) -> Context:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Context) -> Any:
        with _one_line_usage():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except click.NoArgsIsHelpError:
        raise
    except click.UsageError as e:
        raise _OneLineUsage(e) from None


class _EarlyError(click.ClickException):
    """A TunerError raised while the options are parsed (before any command runs)."""

    def __init__(self, error: TunerError):
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file: Any = None) -> None:
        err().print(f"[red]error:[/red] {_escape(self.message)}", markup=True, highlight=False,
                    soft_wrap=True)


def study_file(value: Path) -> Path:
    """An argument's callback: the study file read and checked while the options are parsed,
    before torch or a database is touched (an alias bomb is refused in a fraction of a second)."""
    from tuner.spec import load_spec

    try:
        load_spec(value)
    except TunerError as e:
        raise _EarlyError(e) from None
    return value


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


app = typer.Typer(
    cls=_Group,
    name="tuner",
    help="Hyperparameter tuning for PyTorch: study files, pruning, SQL storage, many workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" stays as written
)

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def out() -> Console:
    """stdout; piped or redirected, as wide as its lines are (a table is never cut)."""
    import sys

    from rich.console import Console

    # no markup: names and values from files and databases print as they are ("[/x]" too);
    # a line with styling says markup=True and escapes what it interpolates. Piped output is
    # never cut to a terminal's width.
    return Console(markup=False) if sys.stdout.isatty() else Console(markup=False, width=100_000)


@functools.cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, markup=False)


@app.callback()
def _quiet_library_warnings() -> None:
    # tuner drives heartbeats itself (not through Study.optimize) and knows which Optuna
    # features are experimental: these warnings say nothing actionable to a user
    warnings.filterwarnings("ignore", message=QUIET_WARNINGS)


def command(fn: F) -> F:
    """Register a command whose TunerErrors become one line on stderr and an exit code."""
    return command_on(app)(fn)


def command_on(target: typer.Typer) -> Callable[[F], F]:
    """:func:`command` for another Typer app (a sub-app such as ``tuner launch``)."""
    return lambda fn: target.command()(_one_line_errors(fn))  # type: ignore[return-value]


def _one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TunerError as e:
            err().print(f"[red]error:[/red] {_escape(str(e))}", markup=True, highlight=False,
                        soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err().print("interrupted")
            raise typer.Exit(130) from None
        except SystemExit as e:  # tuner never calls sys.exit inside a command: user code did
            err().print(f"[red]error:[/red] the study's own code called sys.exit({e.code!r}) "
                        "while tuner ran it; let its functions return (or raise) instead",
                        markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:
            from tuner.storage import is_outage

            if not is_outage(e):
                raise
            err().print("[red]error:[/red] lost the database in the middle of the command; "
                        "check that the server runs, then try again",
                        markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# ---- shared options (read once here, passed down) ----------------------------------------
Storage = Annotated[str, typer.Option("--storage", envvar="TUNER_STORAGE",
                                      help="SQLAlchemy URL of the study database.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DataDir = Annotated[Path, typer.Option(envvar="TUNER_DATA_DIR", help="Where datasets live.")]
Download = Annotated[bool, typer.Option(envvar="TUNER_DOWNLOAD",
                                        help="Download missing torchvision datasets.")]
def _finite(low: float, high: float = math.inf) -> Callable[[float | None], float | None]:
    """An option's callback: a number above ``low``, at most ``high``, never NaN or inf."""
    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and low < value <= high):
            bound = f" and at most {high:g}" if high < math.inf else ""
            raise typer.BadParameter(f"{value} is not a finite number above {low:g}{bound}")
        return value
    return check


def _local_workers(value: int) -> int:
    if value > (most := gate.max_local_workers()):
        raise typer.BadParameter(f"{value} is more than this machine can start ({most}: four "
                                 "per CPU core); use `tuner worker` on more machines")
    return value


def _study_name(value: str | None) -> str | None:
    if value is not None and (why := gate.name_problem(value)) is not None:
        raise typer.BadParameter(why)
    return value


Trials = Annotated[int | None, typer.Option(
    min=1, max=gate.MAX_COUNT, help="Run this many more trials (whole study, all workers).")]
Timeout = Annotated[float | None, typer.Option(
    callback=_finite(0.999, gate.MAX_SECONDS), help="Stop starting trials after this many seconds.")]
BudgetHours = Annotated[float | None, typer.Option(
    callback=_finite(0.0),
    help="Device-hours more for the study: trials' training time summed over all workers.")]
Workers = Annotated[int, typer.Option(
    min=0, callback=_local_workers,
    help="Worker processes on this machine (0: only create the study and its budget).")]
StudyArg = Annotated[str, typer.Argument(help="Study name.", callback=_study_name)]
PerGpu = Annotated[int | None, typer.Option(min=1, help="Workers packed on each GPU.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]

# the options every running command takes, as (name, annotation, default): they become one
# Settings argument of the command (see ``with_settings``)
SETTINGS: list[tuple[str, Any, Any]] = [
    ("storage", Storage, DEFAULT_URL),
    ("device", Device, "auto"),
    ("data_dir", DataDir, Path(DEFAULT_DATA_DIR)),
    ("checkpoint_dir", Annotated[Path | None, typer.Option(
        envvar="TUNER_CHECKPOINT_DIR",
        help="Per-epoch checkpoints; must be shared by all workers [default: beside the SQLite "
             "file, else ./tuner_checkpoints].")], None),
    ("keep_checkpoints", Annotated[bool, typer.Option(
        help="Keep the checkpoints of completed trials.")], False),
    ("download", Download, True),
    ("heartbeat", Annotated[int, typer.Option(envvar="TUNER_HEARTBEAT", min=1, max=DAY,
                                              help="Seconds between heartbeats.")],
     Heartbeat.interval),
    ("grace_period", Annotated[int, typer.Option(
        envvar="TUNER_GRACE_PERIOD", min=1, max=DAY,
        help="Seconds of silence before a trial's worker counts as dead.")], Heartbeat.grace_period),
    ("db_patience", Annotated[int, typer.Option(
        envvar="TUNER_DB_PATIENCE", min=1, max=7 * DAY,
        help="Seconds a worker rides out an unreachable database (training on, reports "
             "held) before it checkpoints and stops.")], DB_PATIENCE),
    ("stall_timeout", Annotated[int | None, typer.Option(
        envvar="TUNER_STALL_TIMEOUT", min=1, max=7 * DAY,
        help="Seconds a trial may go without a finished epoch before it counts as hung: it "
             "is failed and retried elsewhere, and its worker exits [default: no limit].")],
     None),
    ("fuse", Annotated[str | None, typer.Option(
        envvar="TUNER_FUSE",
        help="Train same-shape trials as one stacked model: auto (measure K = 1, 2, 4, 8 on "
             "the device, keep the fastest), off, or K [default: the study's fuse:].")], None),
    ("threads", Annotated[str | None, typer.Option(
        envvar="TUNER_THREADS",
        help="Torch CPU threads of each worker [default: the CPUs it may use (affinity mask, "
             "cgroup quota, SLURM_CPUS_PER_TASK) split among --workers; OMP_NUM_THREADS "
             "wins].")], None),
]


def with_settings(fn: F) -> F:
    """Give a command the SETTINGS options, collected into its ``settings`` argument."""
    sig = inspect.signature(fn, eval_str=True)  # the command's own options, resolved
    names = [n for n, _, _ in SETTINGS]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
             for n, a, d in SETTINGS]
    params = [p for p in sig.parameters.values() if p.name != "settings"]
    hints = {p.name: p.annotation for p in params}

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        from tuner import api

        given = {n: kwargs.pop(n) for n in names}
        settings = api.settings(
            storage=given["storage"], device=given["device"], data_dir=given["data_dir"],
            checkpoint_dir=given["checkpoint_dir"], keep_checkpoints=given["keep_checkpoints"],
            download=given["download"], heartbeat_s=given["heartbeat"],
            grace_period_s=given["grace_period"], db_patience_s=given["db_patience"],
            stall_timeout_s=given["stall_timeout"], fuse=given["fuse"],
            threads=given["threads"])
        return fn(**kwargs, settings=settings)

    wrapper.__signature__ = sig.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    # typer reads the annotations too: the command's own, less ``settings``, and the options'
    wrapper.__annotations__ = {**hints, **{n: a for n, a, _ in SETTINGS}, "return": None}
    return wrapper  # type: ignore[return-value]


class Fmt(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _open(url: str, access: str = "read") -> optuna.storages.RDBStorage:
    """The storage at ``url``; by default read-only, creating nothing (``tuner.storage.connect``:
    only ``run``, ``resume``, ``worker`` create a schema; ``delete``, ``retrain`` and the
    dashboard write into an existing one)."""
    from tuner.storage import connect

    return connect(url, access=access)  # type: ignore[arg-type]


def exit_stalled(e: TunerError) -> NoReturn:
    """A trial of this process hung (``--stall-timeout``): the worker failed it, queued its
    retry and said so in one line; exit with the error's code now, from the heartbeat thread,
    since the main thread is stuck in the training loop and would never return."""
    sys.stderr.flush()
    os._exit(e.exit_code)


def _setup_logging() -> None:
    from tuner.api import quiet_logging

    quiet_logging()


def display_url(url: str) -> str:
    from tuner.storage import display_url as hide_password

    return hide_password(url)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


def val_test_table(validation: dict[str, float | None], test: dict[str, float | None]) -> Any:
    """A metric per row, its validation score (the search's) beside its test score (the
    retrain's, measured once); the train loss on a row of its own, never under "test"."""
    from rich.table import Table

    table = Table("metric", "validation", "test", box=None, header_style="bold",
                  pad_edge=False)
    for k in dict.fromkeys([*validation, *test]):
        if k != "train_loss":
            table.add_row(k, _fmt(validation.get(k)), _fmt(test.get(k)))
    if test.get("train_loss") is not None:
        table.add_row("train loss (train+val, last epoch)", "", _fmt(test["train_loss"]))
    return table


def fitted_table(columns: list[tuple[str, list[str]]], width: int) -> tuple[Any, list[str]]:
    """A table of ``columns`` (header, cells; in the order of importance) that fits in
    ``width`` characters: the columns that do not fit are left out whole, never cut (their
    names are returned, to say so). Numbers right-aligned."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    used, kept, dropped = 0, [], []
    for header, cells in columns:
        need = max(len(header), *(len(c) for c in cells)) if cells else len(header)
        if kept and used + need + 2 > width:
            dropped.append(header)
            continue
        used += need + 2
        kept.append((header, cells))
    for header, cells in kept:
        numeric = all(_is_number(c) for c in cells if c not in ("", "—"))
        table.add_column(header, no_wrap=True, justify="right" if numeric else "left")
    for i in range(len(kept[0][1]) if kept else 0):
        table.add_row(*[cells[i] for _, cells in kept])
    return table, dropped


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("s"))
    except ValueError:
        return False
    return True

