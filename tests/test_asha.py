"""ASHA with promotion (tuner.schedules.asha): trials pause at rungs, keep their checkpoints,
and are promoted by whichever worker needs work, from the database alone. Real worker
processes on SQLite; the trainer is tests/tuner_procs.py's (value x + epoch/100, minimized)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState
from tuner_procs import (
    assert_clean,
    assert_refused,
    kill,
    start_worker,
    trials,
    wait_for,
    worker_pid,
    write_study,
)
from typer.testing import CliRunner

from tuner.cli import app
from tuner.config import parse_spec
from tuner.schedules.asha import rungs
from tuner.storage import PAUSED_ATTR, PROMOTION_OF_ATTR, Budget, connect, engine_of, lineage
from tuner.study import Handle

pytest_plugins = ["servers"]
runner = CliRunner()


def asha_study(tmp: Path, *, trials: int, epochs: int, min_epochs: int = 1) -> Path:
    path = write_study(tmp, trials=trials, epochs=epochs, sleep=0.05)
    path.write_text(path.read_text().replace(
        "pruner: none", f"pruner: {{name: asha, min_epochs: {min_epochs}, reduction_factor: 3}}"))
    return path


def test_rungs_are_min_epochs_times_powers_of_eta_below_epochs() -> None:
    assert rungs(1, 3, 9) == [1, 3]
    assert rungs(1, 3, 10) == [1, 3, 9]
    assert rungs(2, 2, 9) == [2, 4, 8]


@pytest.mark.parametrize(("yaml", "message"), [
    ("min_epochs: 3", "asha's min_epochs (3) must be below epochs (3)"),
    ("min_epochs: 1}\ncheckpoint: false\n#", "set checkpoint: true"),
])
def test_bad_asha_is_one_line_exit_2_nothing_written(tmp_path: Path, yaml: str,
                                                     message: str) -> None:
    path = asha_study(tmp_path, trials=3, epochs=3)
    path.write_text(path.read_text().replace("min_epochs: 1", yaml))
    assert_refused(path, tmp_path, message)


@pytest.mark.slow
def test_workers_pause_promote_and_finish_whole_curves(tmp_path: Path) -> None:
    study = asha_study(tmp_path, trials=9, epochs=9)  # rungs at epochs 1 and 3
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    procs = [start_worker(str(study), url, tmp_path, f"worker{i}", "--worker-index", str(i))
             for i in range(2)]
    for i, p in enumerate(procs):
        assert p.wait(120) == 0, p.output()
        assert_clean(p.output(), f"worker {i}")
    ts = trials(url, "toy")
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # a promotion is not a new trial: 9 lineages in 9 budget slots, however many segments
    lineages = {lineage(t) for t in ts}
    assert len(lineages) == 9 and len(ts) > 9
    assert Budget(connect(url).engine, "toy").state().taken == 9
    by_number = {t.number: t for t in ts}
    continuations = [t for t in ts if PROMOTION_OF_ATTR in t.user_attrs]
    assert continuations
    for c in continuations:
        paused = by_number[c.user_attrs[PROMOTION_OF_ATTR]]
        assert paused.state == TrialState.PRUNED and lineage(paused) == lineage(c)
        assert c.params == paused.params
        # continued from the paused segment's checkpoint, not restarted
        assert c.user_attrs["start_epoch"] == paused.user_attrs[PAUSED_ATTR] + 1
    # the whole learning curve: the finished trial has every epoch, 1..9
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert done and all(sorted(t.intermediate_values) == list(range(1, 10)) for t in done)
    # the top 1/3 of rung 1 (value at epoch 1; lower is better) were all promoted
    first = {lineage(t): t.intermediate_values[1] for t in ts}
    top = sorted(first, key=first.get)[:3]
    promoted = {lineage(c) for c in continuations}
    assert set(top) <= promoted, (top, promoted)
    # the rung segments ran on several workers; nothing is left in the checkpoint folder
    assert len({worker_pid(t) for t in ts}) >= 2
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))
    # `tuner trials` shows the paused and promoted segments
    r = runner.invoke(app, ["trials", "toy", "--storage", url, "--format", "json"])
    assert r.exit_code == 0, r.output
    states = {row["number"]: row["state"] for row in json.loads(r.output)}
    for c in continuations:
        assert states[c.user_attrs[PROMOTION_OF_ATTR]] == "PROMOTED"
    # the study is over: the pauses never promoted were retired, their checkpoints deleted
    assert "PAUSED" not in states.values() and "PRUNED" in states.values()
    r = runner.invoke(app, ["trials", "toy", "--storage", url])
    assert r.exit_code == 0 and "PROMOTED" in r.output and "PRUNED" in r.output
    # optuna-dashboard's table reads what tuner did in each trial's tuner_state (it shows
    # every segment as Pruned)
    ts = {t.number: t for t in trials(url, "toy")}
    for c in continuations:
        assert ts[c.user_attrs[PROMOTION_OF_ATTR]].user_attrs["tuner_state"] == "promoted"
    assert {t.user_attrs["tuner_state"] for t in ts.values() if PAUSED_ATTR in t.user_attrs
            and t.number not in {c.user_attrs[PROMOTION_OF_ATTR] for c in continuations}
            } == {"paused"}
    assert {t.user_attrs["tuner_state"] for t in done} == {"complete"}


# rungs at epochs 1 and 3, eta = 3, the lower value the better
_ASHA = parse_spec({"name": "s", "data": "digits", "epochs": 9, "metric": "loss",
                    "pruner": {"name": "asha", "min_epochs": 1, "reduction_factor": 3}})


def _handle(study) -> Handle:
    return Handle(study, _ASHA, Budget(engine_of(study), study.study_name))


def promote(study, final: bool = False) -> bool:
    """What a worker does when it asks for work: record the schedule's first decision."""
    return _handle(study).promote(final)


def retire(study) -> list[int]:
    return _handle(study).retire()


def _paused(study, x: float, rung: int = 1) -> None:
    import optuna

    study.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, params={"x": x},
        distributions={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
        user_attrs={PAUSED_ATTR: rung}, intermediate_values={1: x}, value=x))


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_racing_workers_promote_a_paused_trial_once_and_retire_the_rest(any_url: str) -> None:
    import threading

    import optuna

    from tuner.results.status import trial_rows
    from tuner.storage import claim

    url = any_url
    optuna.create_study(study_name="s", storage=connect(url))
    study = optuna.load_study(study_name="s", storage=connect(url))
    for x in (0.5, 0.1, 0.9, 0.3, 0.7, 0.2):  # rung 1 holds 6: its top third is 0.1 and 0.2
        _paused(study, x)
    won: list[bool] = []

    def worker() -> None:  # each its own connection, as separate processes would have
        s = optuna.load_study(study_name="s", storage=connect(url))
        won.append(promote(s))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, False, True, True]  # two promotable, each promoted once
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.params["x"] for t in waiting) == [0.1, 0.2]
    assert all(t.intermediate_values == {1: t.params["x"]} for t in waiting)
    assert retire(study) == []  # continuations wait
    for t in waiting:  # the continuations run (as a worker would: claim, then tell)
        study.tell(claim(study, t), t.params["x"])
    retired = retire(study)
    assert sorted(retired) == [0, 2, 3, 4]  # the bottom of the rung: their checkpoints go
    states = {r["number"]: r["state"] for r in trial_rows(study)}
    assert [states[n] for n in range(6)] == ["PRUNED", "PROMOTED", "PRUNED", "PRUNED", "PRUNED",
                                            "PROMOTED"]
    assert not promote(study)


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_a_worker_that_sees_a_promotion_midway_waits_for_it_and_enqueues_nothing(
        any_url: str) -> None:
    """Worker A is inside its promotion (row inserted, continuation being written, nothing
    committed); worker B, which read the study before A's commit and so sees the same
    candidate, waits on A's transaction, then loses the row: one continuation, not two."""
    import threading
    import time

    import optuna
    import sqlalchemy as sa


    optuna.create_study(study_name="s", storage=connect(any_url))
    for x in (0.5, 0.1, 0.9):  # rung 1 holds 3: its top third is 0.1
        _paused(optuna.load_study(study_name="s", storage=connect(any_url)), x)
    inside, go = threading.Event(), threading.Event()
    won: dict[str, bool] = {}

    def hold(conn, cursor, statement, *args) -> None:  # A stops inside its transaction
        if statement.lstrip().upper().startswith("INSERT INTO TRIALS") and not inside.is_set():
            inside.set()
            go.wait(30)

    def worker(name: str) -> None:  # each its own connection, as separate processes would have
        storage = connect(any_url)
        if name == "a":
            sa.event.listen(storage.engine, "after_cursor_execute", hold)
        s = optuna.load_study(study_name="s", storage=storage)
        won[name] = promote(s)

    a = threading.Thread(target=worker, args=("a",))
    a.start()
    assert inside.wait(30)
    b = threading.Thread(target=worker, args=("b",))
    b.start()
    time.sleep(1.5)
    assert b.is_alive()  # queued behind A's transaction, not writing a second continuation
    go.set()
    a.join(30)
    b.join(60)
    assert won == {"a": True, "b": False}
    study = optuna.load_study(study_name="s", storage=connect(any_url))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.params["x"], t.user_attrs[PROMOTION_OF_ATTR]) for t in waiting] == [(0.1, 1)]


@pytest.mark.slow
def test_a_promoted_trial_whose_worker_dies_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    # 1 s epochs: the kill lands mid-epoch (one between a checkpoint and its report would
    # lose that report: a known gap, see tuner/schedules/asha.py)
    path = write_study(tmp_path, trials=6, epochs=9, sleep=1.0)
    path.write_text(path.read_text().replace(
        "pruner: none", "pruner: {name: asha, min_epochs: 1, reduction_factor: 3}"))
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    procs = [start_worker(str(path), url, tmp_path, f"worker{i}", "--worker-index", str(i))
             for i in range(2)]

    def continuing():  # a continuation that has trained past its rung on some worker
        ts = {t.number: t for t in trials(url, "toy")}
        for t in ts.values():
            if t.state == TrialState.RUNNING and PROMOTION_OF_ATTR in t.user_attrs:
                rung = ts[t.user_attrs[PROMOTION_OF_ATTR]].user_attrs[PAUSED_ATTR]
                if max(t.intermediate_values) > rung:
                    return t, rung
        return None

    victim, rung = wait_for("a continuation past its rung", continuing, 90, every=0.05)
    doomed = next(p for p in procs if p.pid == worker_pid(victim))
    kill(doomed)
    survivor = next(p for p in procs if p is not doomed)
    assert survivor.wait(120) == 0, survivor.output()
    ts = trials(url, "toy")
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retries = [t for t in ts if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and lineage(retries[0]) == lineage(victim)
    # resumed from the checkpoint the continuation wrote, not from the rung
    assert retries[0].user_attrs["start_epoch"] > rung + 1
    assert Budget(connect(url).engine, "toy").state().taken == 6
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert done and all(sorted(t.intermediate_values) == list(range(1, 10)) for t in done)
