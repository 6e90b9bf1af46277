"""The report's plots: each a (id, title, caption, draw) whose ``draw`` returns optuna's plotly
figure (for the page) and its matplotlib twin (for the PNG), or raises :class:`Skip` when it
cannot say anything yet (no parameters searched, too few trials for importances)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import lineage, train_losses
from tuner.study import feasible

# parameter importances from fewer completed trials are noise
MIN_IMPORTANCE_TRIALS = 5
SLICES_PER_ROW = 6  # more slice panels than this scroll sideways in the page


@dataclass(frozen=True)
class Section:
    """One plot of the report: drawn (``png`` set unless the PNGs were left out) or skipped
    (``note`` says why)."""

    id: str
    title: str
    caption: str
    png: str | None = None  # file name in the report folder
    note: str = ""


class Skip(Exception):
    """A plot with nothing to show yet; the message becomes the section's note."""


# draw(study, trials, metric) -> (plotly figure, matplotlib figure), or raises Skip
Draw = Callable[[optuna.Study, list[FrozenTrial], str], tuple[Any, Any]]


def plots(spec: Any) -> list[tuple[str, str, str, Draw]]:
    """The plots of ``spec``'s report, in the page's order."""
    return _mo_plots(spec) if spec.multi_objective else _single_plots(spec.metric_name)


def _single_plots(metric: str) -> list[tuple[str, str, str, Draw]]:
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
        raise Skip("no trial reported a value per epoch")
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
        raise Skip("no trial recorded its training loss (ctx.report(..., train_loss=...))")
    plt = pyplot()
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
        raise Skip(f"{searched} searched; importances compare two or more parameters")
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        raise Skip(f"{len(complete)} completed trials; importances need at least "
                    f"{MIN_IMPORTANCE_TRIALS} to mean anything")
    try:
        importances = optuna.importance.get_param_importances(study, target=target)
    except (ValueError, RuntimeError) as e:
        raise Skip(f"optuna could not compute importances: {e}") from None
    pairs = sorted(importances.items(), key=lambda kv: kv[1])  # least important at the bottom
    labels, values = [k for k, _ in pairs], [float(v) for _, v in pairs]
    figure = go.Figure(go.Bar(x=values, y=labels, orientation="h",
                              text=[f"{v:.2f}" for v in values], textposition="outside"))
    figure.update_layout(xaxis_title="importance (sums to 1)", height=140 + 45 * len(labels))
    plt = pyplot()
    mpl, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    ax.barh(labels, values)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center")
    ax.set(xlabel="importance (sums to 1)", title=f"Parameter importances: {metric}")
    return figure, mpl


def _need_params(trials: list[FrozenTrial]) -> set[str]:
    names = {k for t in trials if t.state == TrialState.COMPLETE for k in t.params}
    if not names:
        raise Skip("the study searches no parameter")
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


def pyplot() -> Any:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # nobody chose a backend: draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

