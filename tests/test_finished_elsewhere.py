"""A trial finished from outside while its worker trains it (optuna-dashboard's "Fail trial"
button, another process's tell): the worker stops it at its next epoch, records why, and goes
on with the study, with no traceback. Real worker processes, a real dashboard server."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from optuna.trial import TrialState
from tuner_procs import load, start_worker, trials, wait_for, worker_pid, write_study
from typer.testing import CliRunner

from tuner.cli import app
from tuner.results.dashboard import open_server
from tuner.storage import connect


def cli(*args: str):
    return CliRunner().invoke(app, [*args], catch_exceptions=False)


def _fail_on_the_dashboard(url: str, trial, base: str) -> None:
    request = urllib.request.Request(
        f"{base}/api/trials/{trial._trial_id}/tell", method="POST",
        data=json.dumps({"state": "Fail"}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 204


def _complete_from_a_process(url: str, trial, base: str) -> None:
    load(url, "toy").tell(trial.number, 0.5)


@pytest.mark.slow
@pytest.mark.parametrize(("finish", "state", "more"), [
    (_fail_on_the_dashboard, TrialState.FAIL, 2),  # its slot goes back: 2 trials complete
    (_complete_from_a_process, TrialState.COMPLETE, 1),  # it counts: 1 more completes
], ids=["dashboard-fail", "tell-complete"])
def test_a_trial_finished_from_outside_is_stopped_and_the_study_goes_on(
        finish, state: TrialState, more: int, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = write_study(tmp_path, trials=2, epochs=8, sleep=1.0)
    # the study and the dashboard first: the dashboard's first import takes seconds on a busy
    # machine, longer than a trial of the toy study
    assert cli("run", str(path), "--storage", url, "--workers", "0").exit_code == 0
    server = open_server(connect(url, access="existing"), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        worker = start_worker("toy", url, tmp_path, "W")
        trial = wait_for("a reported epoch", lambda: next(
            (t for t in trials(url, "toy") if worker_pid(t) == worker.pid
             and t.intermediate_values), None), 60)
        finish(url, trial, server.url.removesuffix("/dashboard"))
    finally:
        server.shutdown()
        server.server_close()
    assert worker.wait(120) == 0, worker.output()
    out = worker.output()
    assert "Traceback" not in out and "UpdateFinishedTrialError" not in out, out
    ts = trials(url, "toy")
    stopped = ts[trial.number]
    assert stopped.state == state
    why = stopped.user_attrs["finished_elsewhere"]
    assert why.startswith(f"finished from outside as {state.name} while it ran")
    # stopped at its next epoch, not trained to the end
    assert stopped.user_attrs["epochs_run"] < 8
    others = [t for t in ts if t.number != trial.number]
    assert [t.state for t in others] == [TrialState.COMPLETE] * more
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
