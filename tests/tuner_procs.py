"""Helpers for the multi-process tests: a trivial study, worker processes, the study's rows.

The study's trainer (``fit.py``) does no real training: it sleeps a little each epoch, saves
a checkpoint, reports, and resumes from its checkpoint when retried, keeping the epoch it
started from in ``ctx.info["start_epoch"]`` (a user attr of the trial) so a test can tell a
continued trial from a restarted one. A test that needs a first attempt to stay running
until it says so sets ``FIT_HOLD`` to a file: the attempt waits after its first report
while that file exists (a retry never waits).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import Heartbeat, connect

FIT = textwrap.dedent('''
    import os
    import time


    def fit(params, ctx):
        state = ctx.load_checkpoint()
        start = 1 if state is None else int(state["epoch"]) + 1
        ctx.info["start_epoch"] = start
        # FIT_SLEEP (s per epoch) slows down one worker's first attempts; a retry runs fast
        sleep = params["sleep"] if state is not None else float(
            os.environ.get("FIT_SLEEP", params["sleep"]))
        hold = os.environ.get("FIT_HOLD") if state is None else None
        value = 0.0
        for epoch in range(start, ctx.max_epochs + 1):
            time.sleep(sleep)
            value = params["x"] + epoch / 100
            ctx.save_checkpoint({"epoch": epoch})
            ctx.report(epoch, value)
            while hold and os.path.exists(hold):
                time.sleep(0.05)
        return value
''')

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def write_study(folder: Path, name: str = "toy", *, trials: int = 8, epochs: int = 3,
                sleep: float = 0.05) -> Path:
    """A study file whose trainer is ``fit.py`` beside it; returns the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fit.py").write_text(FIT)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        trainer: fit.py:fit
        task: regression
        metric: mse
        epochs: {epochs}
        trials: {trials}
        sampler: random
        pruner: none
        space:
          x: {{type: float, low: 0.0, high: 1.0}}
          sleep: {sleep}
    """))
    return path


def tuner_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner", *args]


@dataclass
class Proc:
    """A tuner process whose stdout and stderr go to ``log``."""

    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"{self.log.name} still ran after {timeout}s:\n{self.output()}") from None


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    with log.open("wb") as f:
        popen = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})})
    return Proc(popen, log)


def worker_args(study: str, url: str, tmp: Path, *extra: str) -> list[str]:
    """``tuner worker`` on the CPU with 1 s heartbeats and a 3 s grace period."""
    return tuner_cmd("worker", study, "--storage", url, "--device", "cpu",
                     "--checkpoint-dir", str(tmp / "checkpoints"), "--data-dir", str(tmp / "data"),
                     "--heartbeat", "1", "--grace-period", "3", *extra)


def start_worker(study: str, url: str, tmp: Path, log_name: str, *extra: str,
                 env: dict[str, str] | None = None) -> Proc:
    return start(worker_args(study, url, tmp, *extra), tmp / f"{log_name}.log", env)


def start_together(argvs: list[list[str]], tmp: Path) -> list[Proc]:
    """Start processes that each import everything, wait until all have, then run their
    command line at once: a real race, not one staggered by import times."""
    ready = tmp / "ready"
    ready.mkdir()
    launcher = (
        "import os, sys, time\n"
        "import optuna, sqlalchemy, torch\n"
        "import tuner.cli, tuner.trials, tuner.storage, tuner.study, tuner.runtime.worker\n"
        "ready, n = sys.argv[1], int(sys.argv[2])\n"
        "open(os.path.join(ready, str(os.getpid())), 'w').close()\n"
        "while len(os.listdir(ready)) < n:\n"
        "    time.sleep(0.005)\n"
        "sys.argv = ['tuner', *sys.argv[3:]]\n"
        "tuner.cli.main()\n"
    )
    return [start([sys.executable, "-c", launcher, str(ready), str(len(argvs)), *argv[3:]],
                  tmp / f"worker{i}.log") for i, argv in enumerate(argvs)]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=connect(url, Heartbeat(1, 3)))


def trials(url: str, name: str) -> list[FrozenTrial]:
    try:
        return load(url, name).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def finished(ts: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in ts if t.state in FINISHED]


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.1):
    """Poll ``check`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def worker_pid(t: FrozenTrial) -> int | None:
    return (t.user_attrs.get("worker") or {}).get("pid")


def assert_clean(output: str, who: str) -> None:
    """No traceback, error or lock contention in a process's output."""
    for bad in ("Traceback", "Error", "error:", "database is locked", "WARNING"):
        assert bad not in output, f"{who} printed {bad!r}:\n{output}"


def kill(proc: Proc, sig: int = signal.SIGKILL) -> None:
    os.kill(proc.pid, sig)


def assert_refused(path: Path, tmp: Path, message: str) -> None:
    """``tuner run`` and ``tuner check`` of the study file ``path`` each refuse it in one
    line containing ``message``, exit 2, and ``run`` writes no database in ``tmp``."""
    from typer.testing import CliRunner

    from tuner.cli import app

    url = f"sqlite:///{tmp / 'tuner.db'}"
    for cmd in (["run", str(path), "--device", "cpu", "--storage", url], ["check", str(path)]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 2, r.output
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp / "tuner.db").exists()
