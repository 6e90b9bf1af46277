"""tuner report: a real small study -> report.html (opened in headless Chromium), PNGs, CSV."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuner.cli import app

# one worker runs the module (pytest-xdist): its module-scoped study is made once
pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.xdist_group("test_report")]
runner = CliRunner()
PLOTS = ("history", "curves", "train_loss", "parallel", "importance", "slice")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

STUDY = """
name: {name}
data: digits
model: mlp
epochs: 3
trials: {trials}
validation: 0.2
sampler: {{name: tpe, n_startup_trials: 3}}
pruner: none
space:
  lr: {{type: float, low: 1.0e-3, high: 3.0e-2, log: true}}
{more}  batch_size: 64
"""
WIDTH = "  width: {type: int, low: 16, high: 64, log: true}\n"


def make_study(folder: Path, name: str, trials: int, more: str = WIDTH) -> str:
    """Run a real study on digits (offline, seconds); returns its storage URL."""
    spec = folder / f"{name}.yaml"
    spec.write_text(STUDY.format(name=name, trials=trials, more=more))
    url = f"sqlite:///{folder / 'studies.db'}"
    result = runner.invoke(app, ["run", str(spec), "--storage", url, "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    return url


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_study(tmp_path_factory.mktemp("report"), "digits_small", trials=6)


def external_resources(page: str) -> list[str]:
    """Everything the page would fetch: script src, link href, img src (not data: URIs)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Finder(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            url = a.get("src") if tag in ("script", "img", "iframe") else (
                a.get("href") if tag == "link" else None)
            if url and not url.startswith("data:"):
                found.append(url)

    Finder().feed(page)
    return found


def chromium() -> str:
    exe = next((p for n in ("chromium", "chromium-browser", "google-chrome")
                if (p := shutil.which(n))), None)
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    return exe


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
           "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_has_every_plot_as_html_and_png(study: str, tmp_path: Path) -> None:
    import matplotlib

    style_before = dict(matplotlib.rcParams)
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "digits_small", "--out", str(out), "--storage", study])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    for sid in PLOTS:
        png = out / f"{sid}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, f"{sid}.png is not a PNG"
        from PIL import Image

        with Image.open(png) as im:
            im.verify()
            assert min(im.size) > 200
    page = (out / "report.html").read_text()
    for sid in PLOTS:
        assert f'id="{sid}"' in page and f'id="plot-{sid}"' in page
    assert 'id="top-trials"' in page
    # the first screen: the best configuration, its validation score beside its test score
    # (not retrained yet), before any plot
    block = page[page.index('id="best-config"'):page.index("</section>",
                                                           page.index('id="best-config"'))]
    assert page.index('id="best-config"') < page.index('id="history"')
    assert "<th>lr</th>" in block and "validation" in block and "not yet" in block
    assert external_resources(page) == []  # self-contained: plotly.js is inline
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 6 and {"number", "state", "value", "params_lr", "epochs"} <= set(rows[0])
    # optuna's matplotlib plots set a global style; the report keeps it to itself
    assert dict(matplotlib.rcParams) == style_before


def test_no_png_keeps_every_interactive_plot_and_writes_no_png(study: str,
                                                                 tmp_path: Path) -> None:
    """`--no-png`: the same page and table, each plot interactive, no PNG file or link."""
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "digits_small", "--out", str(out), "--no-png",
                                 "--storage", study])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and "skipped" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "trials.csv"]
    page = (out / "report.html").read_text()
    for sid in PLOTS:
        assert f'id="{sid}"' in page and f'id="plot-{sid}"' in page
    assert not re.search(r'href="[^"]*\.png"', page) and 'id="top-trials"' in page


def test_report_opens_offline_in_chromium(study: str, tmp_path: Path) -> None:
    chromium()
    out = tmp_path / "rep"
    assert runner.invoke(app, ["report", "digits_small", "--out", str(out), "--storage",
                               study]).exit_code == 0
    dom = dump_dom((out / "report.html").as_uri(), tmp_path / "profile")
    # each plot div was drawn by plotly.js (an <svg class="main-svg"> inside it)
    for sid in PLOTS:
        start = dom.index(f'id="plot-{sid}"')
        end = dom.find("</section>", start)
        assert "main-svg" in dom[start:end], f"plot {sid} was not rendered"
    table = dom[dom.index('id="top-trials"'):]
    assert len(re.findall(r"<tr>", table)) == 1 + 6  # header + one row per completed trial
    assert "Study digits_small" in dom and "best trial" in dom


def test_too_few_trials_and_one_param_skip_with_a_note(tmp_path: Path) -> None:
    url = make_study(tmp_path, "one_param", trials=2, more="")
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "one_param", "--out", str(out), "--storage", url])
    assert result.exit_code == 0, result.output
    assert "skipped importance: only lr is searched" in result.output
    assert not (out / "importance.png").exists()
    page = (out / "report.html").read_text()
    assert "skipped: only lr is searched" in page
    for sid in ("history", "curves", "parallel", "slice"):
        assert (out / f"{sid}.png").exists()


def test_few_trials_skip_importances(study: str, tmp_path: Path) -> None:
    import optuna

    from tuner import study as st
    from tuner.results import report
    from tuner.storage import connect

    handle = st.load(connect(study), "digits_small")
    few = optuna.create_study(direction="maximize")
    for t in handle.study.trials[:3]:
        few.add_trial(t)
    handle.study = few
    rep = report.build(handle, tmp_path / "rep")
    assert "at least 5" in rep.skipped["importance"]
    assert {p.name for p in rep.pngs} == {f"{s}.png" for s in PLOTS if s != "importance"}


def test_unknown_study_is_one_line(study: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "nope", "--out", str(tmp_path), "--storage", study])
    assert result.exit_code == 2
    assert "no study named 'nope'" in result.output
    assert "Traceback" not in result.output


def test_no_completed_trial_is_one_line(tmp_path: Path) -> None:
    from tuner import study as st
    from tuner.config import parse_spec
    from tuner.storage import connect

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    st.create_or_resume(connect(url), parse_spec({"name": "empty", "data": "digits"}))
    result = runner.invoke(app, ["report", "empty", "--out", str(tmp_path / "r"), "--storage", url])
    assert result.exit_code == 2
    assert "no completed trial" in result.output and "tuner resume empty" in result.output
    assert not (tmp_path / "r" / "report.html").exists()


def figure_data(page: str, sid: str) -> tuple[list[dict], dict]:
    """The traces and layout of the plotly figure ``plot-<sid>`` in report.html."""
    import json

    start = page.index(f'"plot-{sid}",') + len(f'"plot-{sid}",')
    decoder = json.JSONDecoder()
    rest = page[start:].lstrip()
    traces, end = decoder.raw_decode(rest)
    layout, _ = decoder.raw_decode(rest[end:].lstrip(", \n"))
    return traces, layout


def run_report(folder: Path, url: str, name: str) -> str:
    out = folder / f"report_{name}"
    result = runner.invoke(app, ["report", name, "--out", str(out), "--storage", url])
    assert result.exit_code == 0, result.output
    return (out / "report.html").read_text()


ASHA = """
name: asha_legend
data: digits
model: mlp
epochs: 3
trials: 6
validation: 0.2
sampler: random
pruner: {name: asha, min_epochs: 1, reduction_factor: 3}
space:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  optimizer: {type: categorical, choices: [adamw, rmsprop, sgd]}
  batch_size: 64
"""


def test_asha_legends_name_each_configuration_once_and_slice_labels_slant(
        tmp_path: Path) -> None:
    from tuner import study as st
    from tuner.storage import connect, lineage

    (tmp_path / "asha.yaml").write_text(ASHA)
    url = f"sqlite:///{tmp_path / 'asha.db'}"
    r = runner.invoke(app, ["run", str(tmp_path / "asha.yaml"), "--storage", url,
                            "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    trials = st.load(connect(url, access="read"), "asha_legend").study.get_trials()
    lineages = {lineage(t) for t in trials}
    assert len(trials) > len(lineages)  # rung segments: more lines than configurations
    page = run_report(tmp_path, url, "asha_legend")
    for sid in ("curves", "train_loss"):
        traces, _ = figure_data(page, sid)
        named = [t["name"] for t in traces if t.get("showlegend", True)]
        assert sorted(named) == sorted(f"trial {n}" for n in lineages), (sid, named)
    traces, layout = figure_data(page, "slice")
    category = [v for k, v in layout.items() if k.startswith("xaxis") and
                v.get("type") == "category"]
    assert category and all(a.get("tickangle") == -30 for a in category)
    # every parameter's panel is drawn, none wider than the page
    assert len([k for k in layout if k.startswith("xaxis")]) == 2
    assert layout.get("width") is None


TWO = """
name: two
data: digits
model: mlp
objectives: [accuracy, params]
epochs: 1
trials: 6
sampler: random
pruner: none
space:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  width: [8, 16, 32, 64]
  batch_size: 64
"""


def test_two_objectives_keep_importance_and_parallel_per_objective(tmp_path: Path) -> None:
    (tmp_path / "two.yaml").write_text(TWO)
    url = f"sqlite:///{tmp_path / 'two.db'}"
    r = runner.invoke(app, ["run", str(tmp_path / "two.yaml"), "--storage", url,
                            "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    page = run_report(tmp_path, url, "two")
    for i, name in enumerate(("accuracy", "params")):
        for kind in ("parallel", "importance"):
            assert f'id="plot-{kind}_{i}"' in page, (kind, name)
            assert (tmp_path / "report_two" / f"{kind}_{i}.png").read_bytes()[:8] == PNG_MAGIC
        traces, _ = figure_data(page, f"parallel_{i}")
        # each line's first axis is its own objective, the one it is coloured by
        assert {t["customdata"][0][0] for t in traces if "customdata" in t} == {name}
        assert f"Parameter importances: {name}" in page
        bars, _ = figure_data(page, f"importance_{i}")
        assert sorted(bars[0]["y"]) == ["lr", "width"]
