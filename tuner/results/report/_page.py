"""The report's page and table: the HTML around the plots (the study's facts, the best
configuration, the top trials, a population's lineage, the failed trials) and trials.csv."""

from __future__ import annotations

import csv
import datetime as dt
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from tuner import schedules
from tuner.results.retrain import retrained_of
from tuner.storage import PROMOTION_OF_ATTR, lineage
from tuner.study import Handle, pareto_front, primary_value
from tuner.trial_schema import (
    DEVICE_ATTR,
    EPOCHS_ATTR,
    FAIL_REASON_ATTR,
    PARAM_COUNT_ATTR,
    SEED_ATTR,
    WALL_TIME_ATTR,
)

if TYPE_CHECKING:
    import optuna

    from tuner.results.report._plots import Section

FAILED_SHOWN = 20

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


def page(handle: Handle, trials: list[FrozenTrial], complete: list[FrozenTrial],
         sections: list[Section], divs: list[str], top: int) -> str:
    """report.html: the study's facts and best trial, each section (its interactive plot or
    why it was skipped), then the tables."""
    from plotly.offline import get_plotlyjs

    spec, name = handle.spec, handle.name
    e = html.escape
    from tuner.results.status import count, facts

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
        + f" after {best.user_attrs.get(EPOCHS_ATTR, '?')} epochs"
        + (f"; retrained on train+val, test set: <b>{e(test)}</b>" if test else "") + "</p>",
        _best_block(handle, best, retrained),
        f'<nav>{nav} <a href="#top-trials">Top trials</a>'
        + (' <a href="#failed">Failed trials</a>' if counts.get("FAIL") else "") + "</nav>",
    ]
    for s, div in zip(sections, divs, strict=True):
        body.append(f'<section id="{s.id}" class="plot"><h2>{e(s.title)}</h2>'
                    f'<p class="caption">{e(s.caption)}</p>')
        if not s.note:
            body.append(f'<div class="figure">{div}</div>'
                        + (f'<p><a href="{e(s.png)}">{e(s.png)}</a></p>' if s.png else ""))
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
                 str(t.user_attrs.get(EPOCHS_ATTR, "")),
                 _num(_duration(t)), *(_num(t.params.get(p, "")) for p in params),
                 str(t.user_attrs.get(PARAM_COUNT_ATTR, "")), str(t.user_attrs.get(DEVICE_ATTR, "")),
                 str(t.user_attrs.get(SEED_ATTR, ""))]
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
                   f"{e(str(t.user_attrs.get(FAIL_REASON_ATTR, '?')))}</td></tr>"
                   for t in failed[-FAILED_SHOWN:])
    return (f'<section id="failed"><h2>Failed trials</h2><p class="caption">{len(failed)} '
            f"failed; the last {min(len(failed), FAILED_SHOWN)} and why.</p><table><thead><tr>"
            f"<th>trial</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return t.user_attrs.get(WALL_TIME_ATTR)


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def write_csv(study: optuna.Study, path: Path) -> None:
    """trials.csv: every trial, as ``tuner trials`` lists them."""
    from tuner.results.status import trial_rows

    rows = trial_rows(study)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
