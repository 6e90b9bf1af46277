"""What a trial is, decided once (``tuner.results.status.trial_state``), and every view counting
through it: ``studies``, ``status``, ``trials``, ``best`` and the report agree on ASHA and
PBT studies; a multi-objective study shows its Pareto front; a trial whose worker was
killed shows as lost before any worker reaps it (and ``status`` writes nothing), then its
``fail_reason`` says what happened. Real SQLite files, real training, real processes."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState
from tuner_procs import (
    kill,
    start_worker,
    trials,
    tuner_cmd,
    wait_for,
    worker_pid,
    write_study,
)
from typer.testing import CliRunner

from tuner import study as st
from tuner.cli import app
from tuner.results.console import Console
from tuner.results.console._view import COUNTED
from tuner.results.status import snapshot, studies, trial_rows
from tuner.storage import connect

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [*args], catch_exceptions=False, env={"COLUMNS": "250"})


def run_args(path: Path, url: str, tmp: Path, *extra: str) -> list[str]:
    return ["run", str(path), "--storage", url, "--device", "cpu", "--quiet",
            "--checkpoint-dir", str(tmp / "ckpt"), "--data-dir", str(tmp / "data"), *extra]


def _asha(tmp: Path) -> Path:
    path = write_study(tmp, "asha", trials=9, epochs=9, sleep=0.0)
    path.write_text(path.read_text().replace(
        "pruner: none", "pruner: {name: asha, min_epochs: 1, reduction_factor: 3}"))
    return path


def _pbt(tmp: Path) -> Path:
    path = tmp / "pbt.yaml"
    path.write_text(textwrap.dedent("""\
        name: pbt
        data: digits
        model: mlp
        metric: accuracy
        epochs: 3
        validation: 0.2
        sampler: random
        scheduler: {name: pbt, population: 3, interval: 1, quantile: 0.34}
        space:
          lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
          width: 16
          batch_size: 64
        """))
    return path


def _status_counts(output: str) -> dict[str, int]:
    head = output.splitlines()[0]
    return {k.upper(): int(v) for k, v in re.findall(r"([a-z]+) (\d+)", head)}


@pytest.mark.parametrize("make", [_asha, _pbt], ids=["asha", "pbt"])
def test_every_view_counts_the_same_trials(make, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = make(tmp_path)
    result = cli(*run_args(path, url, tmp_path))
    assert result.exit_code == 0, result.output
    name = path.stem
    handle = st.load(connect(url), name)
    snap = snapshot(handle, with_heartbeats=False)
    row = next(r for r in studies(connect(url)) if r.name == name)
    states = Counter(r["state"] for r in trial_rows(handle.study, handle.spec))
    assert row.counts == snap.counts
    assert snap.counts == dict(states)
    # status prints the same numbers
    printed = _status_counts(cli("status", name, "--storage", url).output)
    for kind in ("COMPLETE", "PRUNED", "FAIL", "PAUSED", "PROMOTED"):
        assert printed.get(kind, 0) == snap.counts.get(kind, 0), (kind, printed, snap.counts)
    # every member counts once: its last segment; the segments it went on from are PROMOTED
    assert snap.finished == handle.budget.state().target
    assert snap.counts.get("PROMOTED", 0) > 0 and snap.counts.get("PAUSED", 0) == 0
    if name == "pbt":  # pruner none: nothing was pruned
        assert snap.counts.get("PRUNED", 0) == 0
        assert snap.counts.get("COMPLETE", 0) == 3
    # the console counts the same trials, though it reads them lean, in a few queries
    console = Console(connect(url, access="read"), lambda e, s: [], token=None)
    shown = next(s for s in console.studies() if s["name"] == name)
    page = console.study(name)
    assert page is not None
    kinds = {kind.value: label for kind, label in COUNTED}
    for counts in (shown["counts"], page["counts"]):
        assert {kinds[k]: n for k, n in snap.counts.items()} == {k: n for k, n in counts.items()
                                                                  if n}
    assert shown["finished"] == page["finished"] == snap.finished


def test_a_multi_objective_study_shows_its_pareto_front(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = tmp_path / "mo.yaml"
    path.write_text(textwrap.dedent("""\
        name: mo
        data: digits
        model: mlp
        objectives: [accuracy, params]
        epochs: 1
        trials: 4
        sampler: random
        pruner: none
        space:
          width: [8, 16, 32, 64]
          batch_size: 64
        """))
    assert cli(*run_args(path, url, tmp_path)).exit_code == 0
    handle = st.load(connect(url), "mo")
    size = len(st.pareto_front(handle))
    assert size >= 1
    status = cli("status", "mo", "--storage", url).output
    assert f"Pareto front: {size} trials (maximize accuracy, minimize params)" in status
    assert "best accuracy" not in status
    listed = cli("studies", "--storage", url).output
    assert f"Pareto front of {size}" in listed
    assert "maximize accuracy, minimize params" in listed


def _digest(path: Path) -> str:
    """The database's content (not its bytes: a WAL checkpoint moves pages between files)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


@pytest.mark.slow
def test_a_killed_workers_trial_is_lost_in_status_then_reaped_with_its_reason(tmp_path: Path
                                                                              ) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = write_study(tmp_path, trials=1, epochs=6, sleep=0.5)
    hold = tmp_path / "hold"  # A's trial stays running after its first epoch until killed
    hold.touch()
    doomed = start_worker(str(path), url, tmp_path, "A", env={"FIT_HOLD": str(hold)})
    trial = wait_for("a reported epoch", lambda: next(
        (t for t in trials(url, "toy") if worker_pid(t) == doomed.pid
         and t.intermediate_values), None), 60)
    kill(doomed)
    doomed.wait(10)
    time.sleep(4)  # past the 3 s grace period: no worker is left to reap it
    db = tmp_path / "tuner.db"
    before = _digest(db)
    # as a user runs them: their own processes (the study's database is shared by files)
    shown = subprocess.run(tuner_cmd("status", "toy", "--storage", url, "--grace-period", "3"),
                           capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    assert shown.returncode == 0, shown.stderr
    assert "(lost)" in shown.stdout and "lost 1" in shown.stdout
    assert ("running trial(s) lost their worker (no heartbeat for over the grace period): "
            f"{trial.number}") in shown.stderr
    rows = subprocess.run(tuner_cmd("trials", "toy", "--storage", url, "--grace-period", "3",
                                    "--format", "json"), capture_output=True, text=True)
    assert '"state": "LOST"' in rows.stdout
    # status only read: the trial is still RUNNING, the file unchanged
    assert _digest(db) == before
    assert trials(url, "toy")[trial.number].state == TrialState.RUNNING

    worker = start_worker("toy", url, tmp_path, "B")  # reaps it first, then runs the retry
    assert worker.wait(120) == 0, worker.output()
    reaped = trials(url, "toy")[trial.number]
    assert reaped.state == TrialState.FAIL, worker.output()
    reason = reaped.user_attrs["fail_reason"]
    assert reason.startswith("worker lost: no heartbeat since ")
    assert f"pid {doomed.pid}" in reason and "host " in reason
    handle = st.load(connect(url), "toy")
    snap = snapshot(handle, with_heartbeats=False)
    assert snap.counts.get("FAIL", 0) == 1 and snap.finished == 1

    from tuner.results.report import build

    page = build(handle, tmp_path / "report").html.read_text()
    assert "worker lost: no heartbeat since" in page
