"""A study -> a report folder: one self-contained HTML page, a PNG per plot, and the trials as CSV.

The page embeds plotly.js, so it opens offline and its plots zoom and hover; the PNGs
(matplotlib, drawn with optuna's own plot functions) go into papers and pull requests.

    report.build(handle, Path("runs/digits/report"))   # -> Report(html=..., pngs=[...])

Plots: optimization history, learning curves (the values reported each epoch), training loss,
parallel coordinates, parameter importances, slice plots; then the top trials and the failed
ones with their reasons. A plot that cannot say anything yet (no parameters searched, too
few trials for importances) is skipped with a note rather than drawn empty.

The plots are drawn in :mod:`tuner.report._plots`, the page around them and the CSV written in
:mod:`tuner.report._page`; this module puts them together.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.errors import TunerError
from tuner.gate import writable_folder
from tuner.report._page import FAILED_SHOWN, write_csv
from tuner.report._page import page as render
from tuner.report._plots import MIN_IMPORTANCE_TRIALS, SLICES_PER_ROW, Section, Skip, plots, pyplot
from tuner.study import Handle

__all__ = ["FAILED_SHOWN", "MIN_IMPORTANCE_TRIALS", "PNG_DPI", "SLICES_PER_ROW", "TOP_TRIALS",
           "Report", "Section", "build"]

TOP_TRIALS = 10
PNG_DPI = 110


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
        return {s.id: s.note for s in self.sections if s.note}


def build(handle: Handle, out_dir: str | Path, *, top: int = TOP_TRIALS,
          png: bool = True) -> Report:
    """Write ``report.html``, ``<plot>.png`` and ``trials.csv`` for the study into
    ``out_dir`` (created if needed); ``png=False`` leaves the PNGs out (rendering them is
    most of a report's time; the page's interactive plots stay). Raises TunerError when no
    trial has completed."""
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

    plt = pyplot()
    sections, divs = [], []
    # optuna's matplotlib plots set a global style: keep it inside this report
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plt.style.use("ggplot")
        for sid, title, caption, draw in plots(spec):
            try:
                figure, mpl = draw(study, trials, spec.metric_name)
            except Skip as why:
                sections.append(Section(sid, title, caption, note=str(why)))
                divs.append("")
                continue
            if png:
                mpl.savefig(folder / f"{sid}.png", dpi=PNG_DPI, bbox_inches="tight")
            plt.close(mpl)
            figure.update_layout(template="plotly_white", title=None,
                                 height=figure.layout.height or 460,
                                 margin={"l": 60, "r": 30, "t": 30, "b": 50})
            divs.append(figure.to_html(full_html=False, include_plotlyjs=False,
                                       div_id=f"plot-{sid}", config={"displaylogo": False}))
            sections.append(Section(sid, title, caption, png=f"{sid}.png" if png else None))
    page = folder / "report.html"
    page.write_text(render(handle, trials, complete, sections, divs, top), encoding="utf-8")
    table = folder / "trials.csv"
    write_csv(study, table)
    return Report(folder, page, table, sections)
