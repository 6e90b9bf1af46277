"""Commands that read a study: studies, trials, best, status, check, delete."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tuner.cli._common import (
    DEFAULT_STORAGE,
    Fmt,
    Storage,
    _fmt,
    _open,
    command,
    err,
    fitted_table,
    out,
    val_test_table,
)
from tuner.errors import TunerError
from tuner.trial_schema import EPOCHS_ATTR, FAIL_REASON_ATTR, PROMOTION_OF_ATTR, RETRY_OF_ATTR

GracePeriod = Annotated[int | None, typer.Option(
    envvar="TUNER_GRACE_PERIOD", min=1,
    help="Seconds of heartbeat silence after which a running trial counts as lost (the "
         "workers' --grace-period) [default: 20].")]


@command
def studies(storage: Storage = DEFAULT_STORAGE, grace_period: GracePeriod = None) -> None:
    """Every study in the storage: trials by state, best value (a multi-objective study: its
    Pareto front's size), last activity."""
    from tuner.results.status import studies as rows

    found = rows(_open(storage), grace_period)
    c = [r.counts for r in found]

    def best(r) -> str:
        return _fmt(r.best_value) if r.pareto_size is None else f"Pareto front of {r.pareto_size}"

    def goal(r) -> str:
        return ", ".join(f"{d} {m}" if len(r.directions) > 1 else d
                         for m, d in zip(r.objectives, r.directions, strict=True)) or r.direction

    table, dropped = fitted_table([
        ("study", [r.name for r in found]),
        ("best", [best(r) for r in found]),
        ("complete", [str(x.get("COMPLETE", 0)) for x in c]),
        ("running", [str(x.get("RUNNING", 0)) for x in c]),
        ("pruned", [str(x.get("PRUNED", 0)) for x in c]),
        ("failed", [str(x.get("FAIL", 0)) for x in c]),
        ("infeasible", [str(x.get("INFEASIBLE", 0)) for x in c]),
        ("lost", [str(x.get("LOST", 0)) for x in c]),
        ("direction", [goal(r) for r in found]),
        ("last activity", [r.last_activity.isoformat(sep=" ", timespec="seconds")
                           if r.last_activity else "—" for r in found]),
    ], out().width)
    out().print(table)
    if dropped:
        out().print(f"(left out to fit {out().width} columns: {', '.join(dropped)})",
                    highlight=False, style="dim")


@command
def trials(
    name: Annotated[str, typer.Argument(help="Study name.")],
    format: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.table,
    storage: Storage = DEFAULT_STORAGE,
    grace_period: GracePeriod = None,
) -> None:
    """The trials of a study, as a table, CSV or JSON."""

    from tuner import study as st
    from tuner.results.status import trial_rows

    handle = st.load(_open(storage), name)
    rows = trial_rows(handle.study, handle.spec, grace_period=grace_period)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if format == Fmt.table:  # the essentials first; every column is in csv and json
        skip = {"started", FAIL_REASON_ATTR, RETRY_OF_ATTR, PROMOTION_OF_ATTR, "constraints"}
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
        head = ("number", "state", "value", *handle.spec.objective_names, "epochs")
        columns = [c for c in head if c in columns] + [c for c in columns if c not in head]
        table, dropped = fitted_table(
            [({"number": "#", "duration_s": "secs"}.get(c, c.removeprefix("params_")),
              [_cell(r.get(c)) for r in rows]) for c in columns], out().width)
        out().print(table)
        if dropped:
            out().print(f"(left out to fit {out().width} columns: {', '.join(dropped)}; a "
                        f"wider terminal, or --format csv, shows them)", highlight=False,
                        style="dim")


def _duration_words(s: float) -> str:
    """``s`` seconds as a person says it: 45 s, 12 min, 2 h 05 min."""
    s = round(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s" if s < 600 else f"{round(s / 60)} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _cell(v: Any) -> str:
    """A table cell: floats to 4 significant digits, whole (never cut)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return str(v)


@command
def best(name: Annotated[str, typer.Argument(help="Study name.")],
         storage: Storage = DEFAULT_STORAGE,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The best trial: its value, params, and the test score of its retrain if there is one."""
    from tuner import study as st
    from tuner.results.retrain import retrained_of
    from tuner.results.status import snapshot

    handle = st.load(_open(storage), name)
    if handle.spec.multi_objective:
        _front(handle, as_json)
        return
    snap = snapshot(handle, with_heartbeats=False)
    if snap.best_trial is None:
        raise TunerError(f"study {name!r} has no completed trial yet; run `tuner resume {name}`")
    t = handle.study.trials[snap.best_trial]
    result: dict[str, Any] = {"study": name, "trial": t.number, "metric": handle.spec.metric_name,
                              "value": t.value, "params": t.params,
                              "epochs": t.user_attrs.get(EPOCHS_ATTR)}
    retrained = retrained_of(handle, t.number)
    if retrained:
        result["test"] = retrained
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    out().print(f"best trial {t.number} of {name}: {handle.spec.metric_name} = {_fmt(t.value)}"
              f" after {result['epochs']} epochs", highlight=False)
    for k, v in t.params.items():
        out().print(f"  {k}: {v}", highlight=False)
    if retrained:
        out().print(val_test_table({handle.spec.metric_name: t.value},
                                   retrained.get("metrics", {})))
    else:
        out().print(f"no test score yet: `tuner retrain {name}` measures it once",
                    highlight=False)


def _front(handle: Any, as_json: bool) -> None:
    """A multi-objective study's Pareto front, one row per trial."""
    from rich.table import Table

    from tuner.results.status import pareto_front

    spec, name = handle.spec, handle.name
    front = sorted(pareto_front(handle), key=lambda t: t.number)
    if not front:
        raise TunerError(f"study {name!r} has no feasible completed trial yet; run "
                         f"`tuner resume {name}`")
    names = spec.objective_names
    if as_json:
        rows = [{"trial": t.number, **dict(zip(names, t.values, strict=True)), "params": t.params,
                 "epochs": t.user_attrs.get(EPOCHS_ATTR)} for t in front]
        sys.stdout.write(json.dumps({"study": name, "objectives": names,
                                     "directions": spec.directions, "front": rows},
                                    indent=2, default=str) + "\n")
        return
    out().print(f"Pareto front of {name}: {len(front)} trials ("
                + ", ".join(f"{d} {m}" for m, d in zip(names, spec.directions, strict=True)) + ")")
    params = list(dict.fromkeys(k for t in front for k in t.params))
    table = Table("#", *names, *params, "epochs", box=None, header_style="bold")
    for t in front:
        table.add_row(str(t.number), *[_cell(v) for v in t.values],
                      *[_cell(t.params.get(p)) for p in params], _cell(t.user_attrs.get(EPOCHS_ATTR)))
    out().print(table)


@command
def status(name: Annotated[str, typer.Argument(help="Study name.")],
           storage: Storage = DEFAULT_STORAGE, grace_period: GracePeriod = None) -> None:
    """Live view of a study: workers and their trials, counts, best, time left."""
    from rich.table import Table

    from tuner import study as st
    from tuner.results.status import snapshot
    from tuner.storage import engine_of, read_controls

    handle = st.load(_open(storage), name)
    snap = snapshot(handle, grace_period=grace_period)
    b = snap.budget
    c = snap.counts
    extra = "".join(f" · {k.lower()} {c[k]}" for k in ("INFEASIBLE", "REPEAT", "PAUSED",
                                                        "PROMOTED", "LOST") if c.get(k))
    out().print(f"study {name}: {snap.finished}/{b.target if b.target is not None else '∞'} "
              f"finished · complete {c.get('COMPLETE', 0)} · pruned {c.get('PRUNED', 0)} · failed "
              f"{c.get('FAIL', 0)} · waiting {c.get('WAITING', 0)} · running {c.get('RUNNING', 0)}"
              + extra)
    if snap.pareto_size is not None:
        goal = ", ".join(f"{d} {m}" for m, d in zip(snap.objectives, snap.directions, strict=True))
        out().print(f"Pareto front: {snap.pareto_size} trials ({goal}); `tuner best {name}` "
                    "lists them", highlight=False)
    else:
        out().print(f"best {handle.spec.metric_name}: {_fmt(snap.best_value)}"
                    + (f" (trial {snap.best_trial})" if snap.best_trial is not None else ""))
    if snap.eta_s is not None and (snap.running or snap.eta_s > 0):
        out().print(f"estimated time left: {_duration_words(snap.eta_s)}"
                    + (" (running trials finishing)" if b.stopped is not None else ""),
                    highlight=False)
    if b.deadline is not None:
        out().print(f"deadline in {max(0.0, b.deadline - time.time()) / 60:.1f} min")
    if b.seconds_target is not None or b.seconds_spent > 0:
        left = b.hours_left
        out().print(f"device-hours: {b.hours_spent:.3g} spent"
                    + (f", {left:.3g} left of {b.seconds_target / 3600:.3g}" if left is not None
                       else " (no limit)"), highlight=False)
    if b.stopped is not None:
        out().print(f"stopped early: {b.stopped}", highlight=False, soft_wrap=True)
    if read_controls(engine_of(handle.study), name).paused:
        out().print(f"paused: workers take no new trial until `tuner continue {name}`",
                    highlight=False, soft_wrap=True)
    if (w := snap.warm_start) is not None:
        took = (f"{w['added']} finished trials added" if w["added"]
                else f"its {w['enqueued']} best configurations enqueued")
        out().print(f"warm start: from study {w['from']} in {w['storage']}: {took}",
                    highlight=False, soft_wrap=True)
    if snap.running:
        table = Table("trial", "epoch", "last value", "host", "pid", "device", "heartbeat")
        for r in snap.running:
            beat = "—" if r.heartbeat_age_s is None else f"{r.heartbeat_age_s:.0f}s ago"
            table.add_row(str(r.number), f"{r.epoch}/{handle.spec.epochs}", _fmt(r.last_value),
                          r.host or "?", str(r.pid or "?"), r.device or "?",
                          f"{beat} (lost)" if r.lost else beat)
        out().print(table)
        if lost := [r for r in snap.running if r.lost]:
            err().print(f"[yellow]warning:[/yellow] {len(lost)} running trial(s) lost their worker "
                        f"(no heartbeat for over the grace period): "
                        f"{', '.join(str(r.number) for r in lost)}; the next worker of the study "
                        f"retries them (`tuner resume {name}`)", markup=True, highlight=False,
                        soft_wrap=True)
    else:
        out().print("no trial is running")


@command
def check(file: Annotated[Path, typer.Argument(help="Study file (YAML).")]) -> None:
    """Validate a study file and print its search space."""
    from rich.table import Table

    from tuner.config import load_spec
    from tuner.config.space import describe

    spec = load_spec(file)
    goal = (f"{spec.direction_name} {spec.metric_name}" if spec.metric or spec.task_name
            else "task and metric from the data's labels")
    out().print(f"ok {file}: study {spec.name} — data {spec.data or 'its own'}, "
                f"model {spec.model}{', trainer ' + spec.trainer if spec.trainer else ''}, "
                f"{goal}, up to {spec.epochs} epochs, "
                f"sampler {spec.sampler.name}, pruner {spec.pruner.name}, {spec.trials} trials")
    table = Table("parameter", "kind", "range", "when")
    for row in describe(spec):
        table.add_row(*row)
    out().print(table)


@command
def delete(name: Annotated[str, typer.Argument(help="Study name.")],
           storage: Storage = DEFAULT_STORAGE,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Delete a study and all its trials."""
    from tuner import study as st

    opened = _open(storage, "existing")
    handle = st.load(opened, name, wait_s=0)
    n = len(handle.study.trials)
    if not yes and not typer.confirm(f"Delete study {name!r} and its {n} trials?", default=False):
        raise typer.Exit(1)
    st.delete(opened, name)
    out().print(f"deleted study {name} ({n} trials)")


