"""A study -> a report folder: one self-contained HTML page, a PNG per plot, and the trials as CSV.

The page embeds plotly.js, so it opens offline and its plots zoom and hover; the PNGs
(matplotlib, drawn with optuna's own plot functions) go into papers and pull requests.

    report.build(handle, Path("runs/digits/report"))   # -> Report(html=..., pngs=[...])

Plots: optimization history, learning curves (the values reported each epoch), training loss,
parallel coordinates, parameter importances, slice plots; then the top trials and the failed
ones with their reasons. A plot that cannot say anything yet (no parameters searched, too
few trials for importances) is skipped with a note rather than drawn empty.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner import schedules
from tuner.errors import TunerError
from tuner.gate import writable_folder
from tuner.retrain import retrained_of
from tuner.storage import PROMOTION_OF_ATTR, lineage, train_losses
from tuner.study import Handle, feasible, pareto_front, primary_value

# parameter importances from fewer completed trials are noise
MIN_IMPORTANCE_TRIALS = 5
TOP_TRIALS = 10
FAILED_SHOWN = 20
PNG_DPI = 110
SLICES_PER_ROW = 6  # more slice panels than this scroll sideways in the page


@dataclass(frozen=True)
class Section:
    """One plot of the report: drawn (``png`` set) or skipped (``note`` says why)."""

    id: str
    title: str
    caption: str
    png: str | None = None  # file name in the report folder
    note: str = ""


@dataclass(frozen=True)
class Report:
    folder: Path
    html: Path
    csv: Path
    sections: list[Section] = field(default_factory=list)

    @property
    def pngs(self) -> list[Path]:
        return [self.folder / s.png for s in self.sections if s.png]

    @property
    def skipped(self) -> dict[str, str]:
        return {s.id: s.note for s in self.sections if s.png is None}


class _Skip(Exception):
    """A plot with nothing to show yet; the message becomes the section's note."""


def build(handle: Handle, out_dir: str | Path, *, top: int = TOP_TRIALS) -> Report:
    """Write ``report.html``, ``<plot>.png`` and ``trials.csv`` for the study into
    ``out_dir`` (created if needed). Raises TunerError when no trial has completed."""
    study, spec = handle.study, handle.spec
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not complete:
        raise TunerError(f"study {handle.name!r} has no completed trial yet, so there is nothing "
                         f"to report; run `tuner resume {handle.name}` first")
    folder = writable_folder(out_dir, "--out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TunerError(f"cannot create report folder {folder}: {e.strerror}; "
                         "pick another --out") from None
    import matplotlib

    plt = _pyplot()
    sections, divs = [], []
    # optuna's matplotlib plots set a global style: keep it inside this report
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plt.style.use("ggplot")
        plots = _mo_plots(spec) if spec.multi_objective else _plots(spec.metric_name)
        for sid, title, caption, draw in plots:
            try:
                figure, mpl = draw(study, trials, spec.metric_name)
            except _Skip as why:
                sections.append(Section(sid, title, caption, note=str(why)))
                divs.append("")
                continue
            mpl.savefig(folder / f"{sid}.png", dpi=PNG_DPI, bbox_inches="tight")
            plt.close(mpl)
            figure.update_layout(template="plotly_white", title=None,
                                 height=figure.layout.height or 460,
                                 margin={"l": 60, "r": 30, "t": 30, "b": 50})
            divs.append(figure.to_html(full_html=False, include_plotlyjs=False,
                                       div_id=f"plot-{sid}", config={"displaylogo": False}))
            sections.append(Section(sid, title, caption, png=f"{sid}.png"))
    page = folder / "report.html"
    page.write_text(_page(handle, trials, complete, sections, divs, top), encoding="utf-8")
    table = folder / "trials.csv"
    _write_csv(study, table)
    return Report(folder, page, table, sections)


# ---- the plots: (id, title, caption, draw) ------------------------------------------------
# draw(study, trials, metric) -> (plotly figure, matplotlib figure), or raises _Skip
Draw = Callable[[optuna.Study, list[FrozenTrial], str], tuple[Any, Any]]


def _plots(metric: str) -> list[tuple[str, str, str, Draw]]:
    return [
        ("history", "Optimization history",
         f"Each trial's final validation {metric}, and the best so far.", _history),
        ("curves", "Learning curves",
         f"Validation {metric} after each epoch, one line per trial; pruned trials stop early.",
         _curves),
        ("train_loss", "Training loss", "Mean training loss per epoch, one line per trial.",
         _train_loss),
        ("parallel", "Parallel coordinates",
         f"Each line is a completed trial through its parameters, coloured by {metric}.",
         _parallel),
        ("importance", "Parameter importances",
         f"How much of the variation in {metric} each parameter explains (optuna.importance).",
         _importance),
        ("slice", "Slice plots", f"{metric} against each parameter, one dot per trial.", _slice),
    ]


def _mo_plots(spec: Any) -> list[tuple[str, str, str, Draw]]:
    """A multi-objective study: its Pareto front first, then the curves of the metric the
    training loop reports (the pruned-on objective)."""
    names = spec.objective_names
    shown = " and ".join(names[:2]) if len(names) > 3 else " and ".join(names)

    def pareto(study: optuna.Study, trials: list[FrozenTrial], metric: str) -> tuple[Any, Any]:
        kwargs: dict[str, Any] = {"target_names": names[:2] if len(names) > 3 else names,
                                  "constraints_func": _violations}
        if len(names) > 3:  # optuna draws 2 or 3 objectives: the first two
            kwargs["targets"] = lambda t: (t.values[0], t.values[1])
        return _both(study, "plot_pareto_front", **kwargs)

    return [
        ("pareto", "Pareto front",
         f"Every completed trial by {shown}; the front (no trial better in every objective) is "
         "highlighted; a completed trial that violates a constraint is drawn apart (trials "
         "rejected before training have no values to draw).", pareto),
        ("curves", "Learning curves",
         f"Validation {spec.metric_name} after each epoch, one line per trial; pruned trials "
         "stop early.", _curves),
        ("train_loss", "Training loss", "Mean training loss per epoch, one line per trial.",
         _train_loss),
        *[plot for i, name in enumerate(names) for plot in _per_objective(i, name)],
    ]


def _per_objective(i: int, name: str) -> list[tuple[str, str, str, Draw]]:
    """Parallel coordinates and importances of objective ``i`` of a multi-objective study."""

    def value(t: FrozenTrial) -> float:
        return t.values[i]

    def parallel(study: optuna.Study, trials: list[FrozenTrial], metric: str
                 ) -> tuple[Any, Any]:
        return _parallel(study, trials, name, target=value)

    def importance(study: optuna.Study, trials: list[FrozenTrial], metric: str
                   ) -> tuple[Any, Any]:
        return _importance(study, trials, name, target=value)

    return [
        (f"parallel_{i}", f"Parallel coordinates: {name}",
         f"Each line is a completed trial through its parameters, coloured by {name}.",
         parallel),
        (f"importance_{i}", f"Parameter importances: {name}",
         f"How much of the variation in {name} each parameter explains (optuna.importance).",
         importance),
    ]


def _violations(t: FrozenTrial) -> list[float]:
    """Optuna's constraints convention (> 0 violates) for the Pareto plot."""
    return [0.0 if feasible(t) else 1.0]


def _history(study: optuna.Study, trials: list[FrozenTrial], metric: str) -> tuple[Any, Any]:
    return _both(study, "plot_optimization_history", target_name=metric)


def _curves(study: optuna.Study, trials: list[FrozenTrial], metric: str) -> tuple[Any, Any]:
    if not any(t.intermediate_values for t in trials):
        raise _Skip("no trial reported a value per epoch")
    figure, mpl = _both(study, "plot_intermediate_values")
    by_number = {t.number: lineage(t) for t in trials}
    def of(name: str) -> int | None:
        number = name.removeprefix("Trial")
        return by_number.get(int(number)) if number.isdigit() else None

    shown = _one_entry_per_lineage(figure, mpl.axes[0], of)
    figure.update_layout(showlegend=shown, xaxis_title="epoch", yaxis_title=metric)
    mpl.axes[0].set(xlabel="epoch", ylabel=metric, title="Learning curves")
    return figure, mpl


def _one_entry_per_lineage(figure: Any, ax: Any, lineage_of: Callable[[str], int | None],
                           most: int = 20) -> bool:
    """Name each line by its configuration (an ASHA rung's or a PBT generation's segments
    share their first trial's lineage), with one legend entry per configuration, in both
    figures; no legend past ``most`` configurations (it would hide the lines). Returns
    whether a legend is shown."""
    seen: set[int] = set()
    for trace in figure.data:
        lin = lineage_of(trace.name or "")
        if lin is None:
            continue
        trace.update(name=f"trial {lin}", legendgroup=str(lin), showlegend=lin not in seen)
        seen.add(lin)
    drawn: set[int] = set()
    for line in ax.get_lines():
        lin = lineage_of(line.get_label())
        if lin is None:
            continue
        line.set_label(f"trial {lin}" if lin not in drawn else "_nolegend_")
        drawn.add(lin)
    legend = ax.get_legend()
    if len(seen | drawn) <= most and drawn:
        ax.legend(fontsize="small", ncol=2 if len(drawn) > 10 else 1)
    elif legend is not None:
        legend.remove()
    return len(seen) <= most


def _train_loss(study: optuna.Study, trials: list[FrozenTrial], metric: str) -> tuple[Any, Any]:
    import plotly.graph_objects as go

    curves = [(lineage(t), losses) for t in trials
              if t.state.is_finished() and (losses := train_losses(t))]
    if not curves:
        raise _Skip("no trial recorded its training loss (ctx.report(..., train_loss=...))")
    plt = _pyplot()
    mpl, ax = plt.subplots(figsize=(9, 5))
    figure = go.Figure()
    for lin, losses in curves:
        epochs = list(range(1, len(losses) + 1))
        figure.add_trace(go.Scatter(x=epochs, y=losses, mode="lines+markers",
                                    name=str(lin)))
        ax.plot(epochs, losses, marker=".", alpha=0.7, label=str(lin))
    shown = _one_entry_per_lineage(figure, ax, int)
    figure.update_layout(xaxis_title="epoch", yaxis_title="training loss", showlegend=shown)
    ax.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    if all(v is not None and v > 0 for _, losses in curves for v in losses):
        figure.update_yaxes(type="log")
        ax.set_yscale("log")
    return figure, mpl


def _parallel(study: optuna.Study, trials: list[FrozenTrial], metric: str,
              target: Callable[[FrozenTrial], float] | None = None) -> tuple[Any, Any]:
    n = len(_need_params(trials))
    figure, mpl = _both(study, "plot_parallel_coordinate", target_name=metric,
                        **({} if target is None else {"target": target}))
    mpl.set_size_inches(max(9.0, 2.2 * (n + 1)), 5.5)  # each axis has its own tick labels
    return figure, mpl


def _slice(study: optuna.Study, trials: list[FrozenTrial], metric: str) -> tuple[Any, Any]:
    n = len(_need_params(trials))
    figure, mpl = _both(study, "plot_slice", target_name=metric)
    # optuna makes each panel 300 px wide; narrower ones fit the page up to ~6 parameters
    figure.update_layout(width=None if n <= SLICES_PER_ROW else 190 * n)
    mpl.set_size_inches(max(6.0, 3.6 * n + 1), 4.5)  # room for each log axis's ticks
    # a categorical parameter's labels slant, so that long choices do not run together
    for key in figure.layout:
        if key.startswith("xaxis") and figure.layout[key].type == "category":
            figure.layout[key].tickangle = -30
    categorical = {k for t in trials for k, d in t.distributions.items()
                   if isinstance(d, CategoricalDistribution)}
    for ax in mpl.axes:
        if ax.get_xlabel() in categorical:
            ax.tick_params(axis="x", labelrotation=30)
    return figure, mpl


def _importance(study: optuna.Study, trials: list[FrozenTrial], metric: str,
                target: Callable[[FrozenTrial], float] | None = None) -> tuple[Any, Any]:
    import plotly.graph_objects as go

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names = sorted({k for t in complete for k in t.params})
    if len(names) < 2:
        searched = f"only {names[0]} is" if names else "no parameter is"
        raise _Skip(f"{searched} searched; importances compare two or more parameters")
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        raise _Skip(f"{len(complete)} completed trials; importances need at least "
                    f"{MIN_IMPORTANCE_TRIALS} to mean anything")
    try:
        importances = optuna.importance.get_param_importances(study, target=target)
    except (ValueError, RuntimeError) as e:
        raise _Skip(f"optuna could not compute importances: {e}") from None
    pairs = sorted(importances.items(), key=lambda kv: kv[1])  # least important at the bottom
    labels, values = [k for k, _ in pairs], [float(v) for _, v in pairs]
    figure = go.Figure(go.Bar(x=values, y=labels, orientation="h",
                              text=[f"{v:.2f}" for v in values], textposition="outside"))
    figure.update_layout(xaxis_title="importance (sums to 1)", height=140 + 45 * len(labels))
    plt = _pyplot()
    mpl, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    ax.barh(labels, values)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center")
    ax.set(xlabel="importance (sums to 1)", title=f"Parameter importances: {metric}")
    return figure, mpl


def _need_params(trials: list[FrozenTrial]) -> set[str]:
    names = {k for t in trials if t.state == TrialState.COMPLETE for k in t.params}
    if not names:
        raise _Skip("the study searches no parameter")
    return names


def _both(study: optuna.Study, name: str, **kwargs: Any) -> tuple[Any, Any]:
    """optuna's plotly figure and its matplotlib twin (a Figure, whatever the axes layout)."""
    import optuna.visualization as plotly_vis
    import optuna.visualization.matplotlib as mpl_vis

    figure = getattr(plotly_vis, name)(study, **kwargs)
    axes = getattr(mpl_vis, name)(study, **kwargs)
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    mpl = first.figure
    if not hasattr(axes, "flat"):
        mpl.set_size_inches(9, 5)
    return figure, mpl


def _pyplot() -> Any:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # nobody chose a backend: draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- the page -------------------------------------------------------------------------------
_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 24px 48px;
color:#222}
h1{margin:24px 0 4px}h2{margin:32px 0 4px;border-bottom:1px solid #ddd}
.meta{color:#555}.note{color:#8a6d3b;background:#fcf8e3;padding:8px 12px;border-radius:4px}
.caption{color:#555;margin:2px 0 8px}
nav a{margin-right:14px}.figure{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin-top:8px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f5f5f5}
td.text{text-align:left}
.pair{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.figure .js-plotly-plot,.figure .plotly-graph-div{max-width:100%}
"""


def _page(handle: Handle, trials: list[FrozenTrial], complete: list[FrozenTrial],
          sections: list[Section], divs: list[str], top: int) -> str:
    from plotly.offline import get_plotlyjs

    spec, name = handle.spec, handle.name
    e = html.escape
    from tuner.status import count, facts

    counts = count(trials, facts(handle.study, trials, heartbeats=False))
    front = pareto_front(handle)
    best = (max if spec.direction_name == "maximize" else min)(
        front or complete, key=lambda t: primary_value(spec, t) or 0.0)
    retrained = retrained_of(handle, best.number) or {}
    test = ", ".join(f"{k} {_num(v)}" for k, v in retrained.get("metrics", {}).items())
    goal = ", ".join(f"{d} {m}" for m, d in zip(spec.objective_names, spec.directions,
                                                 strict=True))
    nav = " ".join(f'<a href="#{s.id}">{e(s.title)}</a>' for s in sections)
    body = [
        f"<h1>Study {e(name)}</h1>",
        f'<p class="meta">data {e(str(spec.data))} · model {e(spec.model)}'
        + (f" · trainer {e(spec.trainer)}" if spec.trainer else "")
        + f" · {e(goal)} · up to {spec.epochs} epochs · "
        f"sampler {e(spec.sampler.name)} · pruner {e(spec.pruner.name)}<br>"
        + " · ".join(f"{e(k.lower())} {v}" for k, v in sorted(counts.items()))
        + f" · generated {dt.datetime.now().isoformat(sep=' ', timespec='seconds')}</p>",
        (f'<p id="best">Pareto front: <b>{len(front)}</b> of {len(complete)} completed trials; '
         f"best {e(spec.metric_name)} on it: trial <b>{best.number}</b>, "
         f"<b>{_num(primary_value(spec, best))}</b>" if spec.multi_objective else
         f'<p id="best">best trial <b>{best.number}</b>: {e(spec.metric_name)} '
         f"<b>{_num(best.value)}</b>")
        + f" after {best.user_attrs.get('epochs_run', '?')} epochs"
        + (f"; retrained on train+val, test set: <b>{e(test)}</b>" if test else "") + "</p>",
        _best_block(handle, best, retrained),
        f'<nav>{nav} <a href="#top-trials">Top trials</a>'
        + (' <a href="#failed">Failed trials</a>' if counts.get("FAIL") else "") + "</nav>",
    ]
    for s, div in zip(sections, divs, strict=True):
        body.append(f'<section id="{s.id}" class="plot"><h2>{e(s.title)}</h2>'
                    f'<p class="caption">{e(s.caption)}</p>')
        if s.png:
            body.append(f'<div class="figure">{div}</div>'
                        f'<p><a href="{e(s.png)}">{e(s.png)}</a></p>')
        else:
            body.append(f'<p class="note">skipped: {e(s.note)}</p>')
        body.append("</section>")
    body.append(_top_table(handle, complete, top))
    body.append(_population_table(handle, trials, best))
    body.append(_failed_table(trials))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>tuner report: {e(name)}</title><style>{_CSS}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>\n" + "\n".join(body)
        + "\n</body></html>\n"
    )


def _best_block(handle: Handle, best: FrozenTrial, retrained: dict[str, Any]) -> str:
    """The best configuration, and its scores: validation (the search's) beside test (the
    retrain's, once it ran)."""
    e = html.escape
    params = "".join(f"<tr><th>{e(k)}</th><td>{e(_num(v))}</td></tr>"
                     for k, v in best.params.items())
    test = retrained.get("metrics", {})
    scores = "".join(
        f"<tr><th>{e(m)}</th><td>{_num(v)}</td><td>"
        f"{_num(test[m]) if m in test else 'not yet (tuner retrain)'}</td></tr>"
        for m, v in zip(handle.spec.objective_names, best.values or (), strict=False))
    return ('<section id="best-config"><h2>Best configuration</h2><div class="pair">'
            f"<table>{params}</table><table><tr><th></th><th>validation</th><th>test</th>"
            f"</tr>{scores}</table></div></section>")


def _top_table(handle: Handle, complete: list[FrozenTrial], top: int) -> str:
    """The best trials by the reported metric; in a multi-objective study, the Pareto front
    (each objective a column)."""
    spec = handle.spec
    maximize = spec.direction_name == "maximize"
    pool = pareto_front(handle) if spec.multi_objective else complete
    best = sorted(pool, key=lambda t: primary_value(spec, t) or 0.0, reverse=maximize)[:top]
    params = list(dict.fromkeys(k for t in best for k in t.params))
    e = html.escape
    head = ["rank", "trial", *map(e, spec.objective_names), "epochs", "duration (s)",
            *map(e, params), "# weights", "device", "seed"]
    rows = []
    for rank, t in enumerate(best, 1):
        cells = [str(rank), str(t.number), *(_num(v) for v in t.values),
                 str(t.user_attrs.get("epochs_run", "")),
                 _num(_duration(t)), *(_num(t.params.get(p, "")) for p in params),
                 str(t.user_attrs.get("param_count", "")), str(t.user_attrs.get("device", "")),
                 str(t.user_attrs.get("seed", ""))]
        rows.append("<tr>" + "".join(f"<td>{e(c) if c else ''}</td>" for c in cells) + "</tr>")
    what = "trials of the Pareto front" if spec.multi_objective else "best"
    return (f'<section id="top-trials"><h2>Top trials</h2><p class="caption">The {len(best)} '
            f"{what} of {len(complete)} completed trials; every trial is in "
            '<a href="trials.csv">trials.csv</a>.</p><table><thead><tr>'
            + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></section>")


def _population_table(handle: Handle, trials: list[FrozenTrial], best: FrozenTrial) -> str:
    """A population schedule (PBT): each member's lineage (whose weights it took, which
    hyperparameters changed, at which epoch) and the schedule of the best member's weights,
    which ``tuner retrain`` replays."""
    sched = schedules.of(handle.spec)
    if not sched.population:
        return ""
    e = html.escape
    rows = []
    for member, t in sorted(schedules.latest(trials).items()):
        events = "<br>".join(e(sched.describe(s)) for s in sorted(trials, key=lambda s: s.number)
                             if lineage(s) == member and PROMOTION_OF_ATTR in s.user_attrs)
        rows.append(f"<tr><td>{member}</td><td>{t.number}</td><td>{e(t.state.name)}</td>"
                    f"<td>{_num(t.value)}</td><td class=\"text\">{events or 'own weights only'}"
                    "</td></tr>")
    plan = "".join(f"<tr><td>{s['from_epoch']}</td><td class=\"text\">"
                   f"{e(', '.join(f'{k}={_num(v)}' for k, v in s['params'].items()))}</td></tr>"
                   for s in sched.segments(best) or [])
    return (f'<section id="population"><h2>Population ({e(sched.name.upper())})</h2>'
            '<p class="caption">Each member\'s '
            "lineage: at which epoch it took whose weights, and which hyperparameters "
            "changed.</p><table><thead><tr><th>member</th><th>last trial</th><th>state</th>"
            f"<th>value</th><th>lineage</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<p class=\"caption\">The schedule of trial {best.number}'s weights (what "
            "<code>tuner retrain</code> replays):</p><table><thead><tr><th>from epoch</th>"
            f"<th>params</th></tr></thead><tbody>{plan}</tbody></table></section>")


def _failed_table(trials: list[FrozenTrial]) -> str:
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if not failed:
        return ""
    e = html.escape
    rows = "".join(f'<tr><td>{t.number}</td><td class="text">'
                   f"{e(str(t.user_attrs.get('fail_reason', '?')))}</td></tr>"
                   for t in failed[-FAILED_SHOWN:])
    return (f'<section id="failed"><h2>Failed trials</h2><p class="caption">{len(failed)} '
            f"failed; the last {min(len(failed), FAILED_SHOWN)} and why.</p><table><thead><tr>"
            f"<th>trial</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return t.user_attrs.get("wall_time_s")


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _write_csv(study: optuna.Study, path: Path) -> None:
    from tuner.status import trial_rows

    rows = trial_rows(study)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
