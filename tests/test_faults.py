"""Faults, for real (issue 12 section 5): workers killed -9 at random during an 8-worker study,
a trial that hangs while its worker lives (``--stall-timeout``), a checkpoint folder that
cannot be written. Real worker processes on a real database; the trainer sleeps
(tests/tuner_procs.py), since what is tested is the recovery, not training."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import textwrap
import time
from collections import Counter

import pytest
from optuna.trial import TrialState
from tuner_procs import (
    finished,
    kill,
    load,
    start_worker,
    trials,
    wait_for,
    worker_pid,
    write_study,
)
from typer.testing import CliRunner

from tuner.errors import TrialStalled
from tuner.storage import CRASHES_ATTR, MAX_RETRIES, RETRY_OF_ATTR, heartbeat_ages

pytest_plugins = ["servers"]

# tuner_procs' trainer, plus a hang after epoch 1 in a worker started with FIT_HANG=1
HANGING_FIT = textwrap.dedent('''
    import os
    import time


    def fit(params, ctx):
        state = ctx.load_checkpoint()
        start = 1 if state is None else int(state["epoch"]) + 1
        ctx.info["start_epoch"] = start
        value = 0.0
        for epoch in range(start, ctx.max_epochs + 1):
            time.sleep(params["sleep"])
            value = params["x"] + epoch / 100
            ctx.save_checkpoint({"epoch": epoch})
            ctx.report(epoch, value)
            if os.environ.get("FIT_HANG"):
                time.sleep(10**6)  # a deadlocked step: the process and its heartbeat live on
        return value
''')


def wait_or_dump(proc, timeout: float, url: str) -> int | None:
    """The exit code; or, past ``timeout``, the study's trials and the process's thread
    stacks (faulthandler)."""
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        study = load(url, "toy")
        rows = [(t.number, t.state.name, worker_pid(t), t.user_attrs.get(RETRY_OF_ATTR))
                for t in study.get_trials() if not t.state.is_finished()]
        ages = heartbeat_ages(study)
        os.kill(proc.pid, signal.SIGABRT)
        proc.popen.wait(10)
        raise AssertionError(f"{proc.log.name} still ran after {timeout}s; unfinished {rows}, "
                             f"beats {ages}:\n{proc.output()}") from None


def check_exact(ts, budget: int) -> None:
    numbers = [t.number for t in ts]
    assert len(numbers) == len(set(numbers)), f"trial numbers repeat: {sorted(numbers)}"
    assert len(finished(ts)) == budget, [(t.number, t.state.name) for t in ts]
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def check_resumed(ts, failed) -> None:
    """Each failed attempt has exactly one retry (same params), which continued after the
    attempt's last checkpoint (saved just before each report: a kill between the two loses
    the point, not the checkpoint)."""
    by_number = {t.number: t for t in ts}
    retries = Counter(t.user_attrs.get(RETRY_OF_ATTR) for t in ts)
    for t in failed:
        assert retries[t.number] == 1, f"trial {t.number} retried {retries[t.number]} times"
        retry = next(r for r in ts if r.user_attrs.get(RETRY_OF_ATTR) == t.number)
        assert retry.params == t.params
        assert retry.user_attrs["lineage"] == t.user_attrs.get("lineage", t.number)
        reported = max(t.intermediate_values, default=0)
        started = by_number[retry.number].user_attrs.get("start_epoch")
        if started is not None:  # None: the retry itself was killed before it said so
            assert started - 1 in (reported, reported + 1), (t.number, reported, started)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUNER_TEST_CHAOS"),
                    reason="opt in with TUNER_TEST_CHAOS=1: 1 to 2.5 minutes (8 kills 2.5 s "
                           "apart, after 8 workers import torch), too long for every run; the "
                           "kill-at-each-statement tests below cover its causes of failure")
@pytest.mark.parametrize("any_url", ["postgresql"], indirect=True)
def test_chaos_random_kills_during_an_eight_worker_study(any_url, tmp_path, monkeypatch):
    """8 workers; every ~2.5 s a random worker in the middle of a trial (past its first
    checkpoint) is killed -9 and a replacement started, 8 times. The study ends exact."""
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # SIGABRT: a stuck worker's stacks
    rng = random.Random(12)
    budget, kills = 48, 8
    study = write_study(tmp_path, trials=budget, epochs=6, sleep=1.0)
    workers = [start_worker(str(study), any_url, tmp_path, f"w{i}", "--worker-index", str(i))
               for i in range(8)]
    started = 8
    # the clock starts once most workers train (8 torch imports take a while on a shared CPU)
    wait_for("6 workers training", lambda: len({worker_pid(t) for t in trials(any_url, "toy")
                                                 if t.state == TrialState.RUNNING}) >= 6, 120,
             every=0.5)
    killed: list[tuple[int, int]] = []  # (pid, trial number)
    t0 = time.monotonic()
    while len(killed) < kills and time.monotonic() - t0 < 75:
        time.sleep(2.5)
        alive = {w.pid: w for w in workers if w.popen.poll() is None}
        victims = [t for t in trials(any_url, "toy")
                   if t.state == TrialState.RUNNING and t.intermediate_values
                   and worker_pid(t) in alive
                   and int(t.system_attrs.get(CRASHES_ATTR, 0)) < MAX_RETRIES]
        if not victims:
            continue
        victim = rng.choice(victims)
        kill(alive[worker_pid(victim)])
        killed.append((worker_pid(victim), victim.number))
        workers.append(start_worker("toy", any_url, tmp_path, f"w{started}"))
        started += 1
    assert len(killed) == kills, (
        f"only {len(killed)} kills in 75 s: "
        f"{[(t.number, t.state.name, worker_pid(t)) for t in trials(any_url, 'toy')]}\n"
        f"{workers[0].output()[-2000:]}")
    killed_pids = {pid for pid, _ in killed}
    for w in workers:
        if w.pid not in killed_pids:
            assert wait_or_dump(w, 90, any_url) == 0, w.output()
            assert "Traceback" not in w.output(), w.output()
    ts = trials(any_url, "toy")
    check_exact(ts, budget)
    failed = [t for t in ts if t.state == TrialState.FAIL]
    # every failure is a kill's; a victim read RUNNING may have told its result just before
    # the signal landed (then it is finished, by the victim)
    by_number = {t.number: t for t in ts}
    assert all(worker_pid(t) in killed_pids for t in failed)
    for pid, n in killed:
        assert by_number[n].state == TrialState.FAIL or (
            by_number[n].state in (TrialState.COMPLETE, TrialState.PRUNED)
            and worker_pid(by_number[n]) == pid), (n, by_number[n].state)
    check_resumed(ts, failed)
    print(f"{kills} kills, {len(failed)} attempts failed and retried, {budget} trials exact, "
          f"{time.monotonic() - t0:.0f} s")


@pytest.mark.slow
@pytest.mark.parametrize("any_url", ["sqlite", "postgresql"], indirect=True)
def test_a_hung_trial_is_failed_and_retried_elsewhere(any_url, tmp_path):
    study = write_study(tmp_path, trials=2, epochs=3, sleep=0.2)
    (tmp_path / "fit.py").write_text(HANGING_FIT)
    hung = start_worker(str(study), any_url, tmp_path, "hung", "--stall-timeout", "3",
                        env={"FIT_HANG": "1"})
    first = wait_for("the hung worker's epoch 1", lambda: next(
        (t for t in trials(any_url, "toy") if t.intermediate_values), None), 60)
    reported = time.monotonic()
    other = start_worker("toy", any_url, tmp_path, "other", "--stall-timeout", "3")
    assert hung.wait(30) == TrialStalled.exit_code, hung.output()
    took = time.monotonic() - reported
    assert 2 <= took < 3 + 1 + 3, f"{took:.1f}s"  # the timeout, a beat, and slack
    lines = [line for line in hung.output().splitlines() if "--stall-timeout" in line]
    assert len(lines) == 1 and f"trial {first.number} finished no epoch" in lines[0], \
        hung.output()
    assert "Traceback" not in hung.output()
    assert other.wait(60) == 0, other.output()
    ts = trials(any_url, "toy")
    check_exact(ts, 2)
    stalled = next(t for t in ts if t.number == first.number)
    assert stalled.state == TrialState.FAIL
    assert stalled.user_attrs["fail_reason"].startswith("stalled:")
    check_resumed(ts, [stalled])
    retry = next(t for t in ts if t.user_attrs.get(RETRY_OF_ATTR) == first.number)
    assert retry.state == TrialState.COMPLETE and worker_pid(retry) == other.pid
    assert retry.user_attrs["start_epoch"] == 2  # from the hung attempt's checkpoint


def test_a_stall_timeout_within_a_heartbeat_is_refused(tmp_path):
    from tuner.cli import app

    study = write_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    res = CliRunner().invoke(app, ["run", str(study), "--storage", url, "--heartbeat", "5",
                                   "--stall-timeout", "5"])
    assert res.exit_code == 2, res.output
    assert "--stall-timeout 5 is not above the heartbeat interval" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "tuner.db").exists()


@pytest.mark.slow
def test_an_unwritable_checkpoint_folder_stops_that_worker_only(tmp_path):
    """Worker A's checkpoint folder has a file where the study's folder should be (root
    ignores permissions, not that): A says so in one line and exits 2; its trial is retried
    by worker B, whose folder works; the budget is exact."""
    study = write_study(tmp_path, trials=3, epochs=2, sleep=0.3)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "toy").write_text("a file where the study's checkpoint folder should be")
    a = start_worker(str(study), url, tmp_path, "A", "--checkpoint-dir", str(broken))
    assert a.wait(60) == 2, a.output()
    out = a.output()
    lines = [line for line in out.splitlines() if "cannot write the checkpoint" in line]
    assert len(lines) == 1 and "--checkpoint-dir" in lines[0], out
    assert "Traceback" not in out
    ts = trials(url, "toy")
    (lost,) = [t for t in ts if t.state == TrialState.FAIL]
    assert "cannot write the checkpoint" in lost.user_attrs["fail_reason"]
    assert [t.user_attrs.get(RETRY_OF_ATTR) for t in ts if t.state == TrialState.WAITING] \
        == [lost.number]
    b = start_worker("toy", url, tmp_path, "B")  # checkpoints in tmp_path/checkpoints
    assert b.wait(60) == 0, b.output()
    ts = trials(url, "toy")
    check_exact(ts, 3)
    assert all(worker_pid(t) == b.pid for t in finished(ts))


def test_a_heartbeat_is_one_statement(tmp_path):
    """After a trial's first beat (which inserts its row), each beat is one UPDATE, and its
    transaction nothing else (Optuna's: two SELECTs, a now() and the UPDATE)."""
    import optuna
    import sqlalchemy as sa

    from tuner.storage import Heartbeat, connect, engine_of, record_heartbeat

    study = optuna.create_study(storage=connect(f"sqlite:///{tmp_path / 'db'}", Heartbeat(1, 3)))
    with pytest.warns(UserWarning, match="Heartbeat"):  # tuner beats itself, not optimize()
        trial = study.ask()
    record_heartbeat(trial)
    before = heartbeat_ages(study)[trial.number]
    statements: list[str] = []
    sa.event.listen(engine_of(study), "before_cursor_execute",
                    lambda *args: statements.append(args[2]))
    record_heartbeat(trial)
    statements = [s for s in statements if not s.startswith("BEGIN")]  # SQLite's write lock
    assert len(statements) == 1 and statements[0].startswith("UPDATE trial_heartbeats"), \
        statements
    assert heartbeat_ages(study)[trial.number] <= before + 1


# A worker killed -9 at an exact point of the storage steps that start or end a trial: a child
# process runs one step on the study and kills itself right after the named statement has
# executed (before its transaction commits), or, for "after", once the step has returned.
KILL_AT = textwrap.dedent('''
    import os, signal, sys
    import optuna, sqlalchemy as sa
    from tuner import storage
    url, step, at = sys.argv[1:4]
    study = optuna.load_study(study_name="toy", storage=storage.connect(url, storage.Heartbeat(1, 2)))
    budget = storage.Budget(storage.engine_of(study), "toy")

    def die(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(at):
            os.kill(os.getpid(), signal.SIGKILL)

    if at != "AFTER":
        sa.event.listen(storage.engine_of(study), "after_cursor_execute", die)
    if step == "start":
        storage.start_trial(study, budget)
    elif step == "claim":
        (waiting,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        storage.claim(study, waiting, None if storage.is_retry(waiting) else budget)
    else:
        storage.fail_stale_trials(study, budget)
    os.kill(os.getpid(), signal.SIGKILL)
''')


def _die_at(url: str, step: str, at: str) -> None:
    import sys

    proc = subprocess.run([sys.executable, "-c", KILL_AT, url, step, at], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _toy_study(url: str, budget: int):
    import optuna

    from tuner.storage import Budget, Heartbeat, connect, engine_of

    study = optuna.create_study(study_name="toy", storage=connect(url, Heartbeat(1, 2)))
    b = Budget(engine_of(study), "toy")
    b.initialize(budget, None)
    return study, b


def _beats(study) -> set[int]:
    """Numbers of the trials that have a heartbeat row (whatever their state)."""
    import sqlalchemy as sa

    from tuner.storage import engine_of

    with engine_of(study).connect() as conn:
        ids = {r[0] for r in conn.execute(sa.text("SELECT trial_id FROM trial_heartbeats"))}
    return {t.number for t in study.get_trials() if t._trial_id in ids}


@pytest.mark.parametrize("any_url", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("at", ["UPDATE TUNER_BUDGETS", "INSERT INTO TRIALS",
                                "INSERT INTO TRIAL_HEARTBEATS"])
def test_a_worker_killed_while_starting_a_trial_leaves_no_slot_and_no_trial(any_url, at):
    """Killed after taking a slot, after creating the trial, after its first beat: before the
    commit nothing is left (once, a killed worker's slot stayed taken by no trial, or its
    trial RUNNING with no heartbeat row, invisible to the reaper, for ever)."""
    study, budget = _toy_study(any_url, 2)
    _die_at(any_url, "start", at)
    assert study.get_trials() == []
    assert budget.state().taken == 0


@pytest.mark.parametrize("any_url", ["postgresql", "mysql"], indirect=True)
def test_a_worker_killed_once_its_trial_started_leaves_it_to_the_reaper(any_url):
    """Killed right after starting a trial (before it trained anything): the trial has its
    slot and its heartbeat row, so the reaper fails it after the grace period and retries it
    in the same slot."""
    from tuner.storage import fail_stale_trials

    study, budget = _toy_study(any_url, 2)
    _die_at(any_url, "start", "AFTER")
    (t,) = study.get_trials()
    assert t.state == TrialState.RUNNING and _beats(study) == {t.number}
    assert budget.state().taken == 1
    time.sleep(3)  # the grace period (2 s), by the database's clock
    assert fail_stale_trials(study, budget) == [t.number]
    states = sorted((u.number, u.state.name, u.user_attrs.get(RETRY_OF_ATTR))
                    for u in study.get_trials())
    assert states == [(0, "FAIL", None), (1, "WAITING", 0)]
    assert budget.state().taken == 1
    assert study.trials[0].user_attrs["tuner_state"] == "lost"  # for optuna-dashboard


@pytest.mark.parametrize("any_url", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("retry", [True, False], ids=["retry", "enqueued"])
def test_a_worker_killed_while_claiming_a_waiting_trial_leaves_it_waiting(any_url, retry):
    """Killed after the UPDATE that makes a waiting trial RUNNING (and, for a trial enqueued
    by hand, after taking its slot): it is still WAITING, with no slot taken; killed once the
    claim returned, it is RUNNING with a heartbeat row, which the reaper sees."""
    import optuna

    from tuner.storage import fail_stale_trials, retry_template

    study, budget = _toy_study(any_url, 2)
    if retry:
        study.add_trial(retry_template(optuna.trial.create_trial(
            params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            state=TrialState.FAIL)))
        budget.acquire()  # the failed attempt's slot, which its retry inherits
    else:
        study.enqueue_trial({"x": 0.5})
    taken = budget.state().taken
    for at in ("UPDATE TRIALS", "UPDATE TUNER_BUDGETS") if not retry else ("UPDATE TRIALS",):
        _die_at(any_url, "claim", at)
        assert [u.state for u in study.get_trials()] == [TrialState.WAITING], at
        assert budget.state().taken == taken and _beats(study) == set(), at
    _die_at(any_url, "claim", "AFTER")
    (t,) = study.get_trials()
    assert t.state == TrialState.RUNNING and _beats(study) == {t.number}
    assert budget.state().taken == (taken if retry else taken + 1)
    time.sleep(3)
    assert fail_stale_trials(study, budget) == [t.number]
    assert budget.state().taken == (taken if retry else taken + 1)  # the retry holds it


@pytest.mark.parametrize("any_url", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("at", ["UPDATE TRIALS", "INSERT INTO TRIALS"])
def test_a_reaper_killed_while_failing_a_stale_trial_leaves_it_running(any_url, at):
    """The reaper fails a dead worker's trial and enqueues its retry in one transaction:
    killed in between, the trial is still RUNNING (and the next reaper retries it); once, it
    was FAIL with no retry and its slot held by nothing."""
    from tuner.storage import fail_stale_trials, start_trial

    study, budget = _toy_study(any_url, 2)
    t = start_trial(study, budget)
    time.sleep(3)
    _die_at(any_url, "reap", at)
    assert [u.state for u in study.get_trials()] == [TrialState.RUNNING]
    assert fail_stale_trials(study, budget) == [t.number]
    assert [(u.state, u.user_attrs.get(RETRY_OF_ATTR)) for u in study.get_trials()] == [
        (TrialState.FAIL, None), (TrialState.WAITING, t.number)]
    assert budget.state().taken == 1


# A real worker (``tuner worker``) that kills itself -9 once it has decided something (an ASHA
# promotion, a PBT generation: an INSERT INTO tuner_promotions) and then executed the ``nth``
# statement starting with ``at`` (before its transaction commits). It writes the statement to
# ``marker`` first, so a test knows the kill landed there and not elsewhere.
DIE_DECIDING = textwrap.dedent('''
    import os, signal, sys
    import sqlalchemy as sa
    import tuner.cli
    at, nth, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seen = {"decided": False, "n": 0}

    def die(conn, cursor, statement, *args):
        s = statement.lstrip().upper()
        seen["decided"] = seen["decided"] or s.startswith("INSERT INTO TUNER_PROMOTIONS")
        if seen["decided"] and s.startswith(at):
            seen["n"] += 1
            if seen["n"] == nth:
                with open(marker, "w") as f:
                    f.write(statement)
                os.kill(os.getpid(), signal.SIGKILL)

    sa.event.listen(sa.Engine, "after_cursor_execute", die)
    sys.argv = ["tuner", *sys.argv[4:]]
    tuner.cli.main()
''')


def _start_dying_decider(study, url: str, tmp, at: str, nth: int = 1):
    import sys

    from tuner_procs import start, worker_args

    marker = tmp / "died_at"
    args = worker_args(str(study), url, tmp)
    return start([sys.executable, "-c", DIE_DECIDING, at, str(nth), str(marker), *args[3:]],
                 tmp / "decider.log"), marker


def _decisions(url: str) -> list[tuple[int, int, int]]:
    """(lineage, rung or generation, trial) of every row of tuner_promotions."""
    import sqlalchemy as sa

    from tuner.storage import connect

    with connect(url).engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT lineage, rung, trial FROM tuner_promotions"))]


def _check_continued_once(url: str, ts) -> list:
    """Every promotion row (a paused trial's number, not -1) has exactly one continuation and
    every continuation its row; no trial is left RUNNING or WAITING, none PAUSED for ever."""
    from tuner.results.status import trial_rows
    from tuner.storage import PROMOTION_OF_ATTR

    assert not [(t.number, t.state.name) for t in ts
                if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    promoted = sorted(trial for lin, _, trial in _decisions(url) if lin >= 0 and trial >= 0)
    continuations = [t for t in ts if PROMOTION_OF_ATTR in t.user_attrs]
    assert sorted(t.user_attrs[PROMOTION_OF_ATTR] for t in continuations) == promoted
    assert promoted, "nothing was promoted"
    states = {r["number"]: r["state"] for r in trial_rows(load(url, "toy"))}
    assert "PAUSED" not in states.values(), states
    return continuations


@pytest.mark.slow
# every kill point on SQLite; on the servers the one inside the transaction (the
# continuation's trial row), to keep the suite's time
@pytest.mark.parametrize(("any_url", "at"), [
    ("sqlite", "INSERT INTO TUNER_PROMOTIONS"), ("sqlite", "INSERT INTO TRIALS"),
    ("sqlite", "INSERT INTO TRIAL_INTERMEDIATE_VALUES"), ("postgresql", "INSERT INTO TRIALS"),
    ("mysql", "INSERT INTO TRIAL_INTERMEDIATE_VALUES")], indirect=["any_url"])
def test_an_asha_decider_killed_while_promoting_leaves_it_to_the_next_worker(any_url, tmp_path,
                                                                            at):
    """A worker killed after its promotion row, after creating the continuation, after
    copying its curve (before the commit): nothing of the promotion is left, and another
    worker promotes that trial itself; the study ends whole. Once, the row and the
    continuation were two transactions: killed between them, the lineage stayed promoted and
    never continued, PAUSED for ever."""
    from tuner.storage import PAUSED_ATTR, Budget, connect, lineage

    study = write_study(tmp_path, trials=9, epochs=9, sleep=0.02)  # rungs at epochs 1 and 3
    study.write_text(study.read_text().replace(
        "pruner: none", "pruner: {name: asha, min_epochs: 1, reduction_factor: 3}"))
    decider, marker = _start_dying_decider(study, any_url, tmp_path, at)
    assert decider.wait(120) == -signal.SIGKILL, decider.output()
    assert marker.read_text().lstrip().upper().startswith(at)
    # the first promotion (rung 1's top third of three) was cut off: nothing of it is left
    assert _decisions(any_url) == []
    paused = [t for t in trials(any_url, "toy") if PAUSED_ATTR in t.user_attrs]
    assert len(paused) == 3 and all(t.state == TrialState.PRUNED for t in paused)
    survivor = start_worker("toy", any_url, tmp_path, "survivor")
    assert survivor.wait(120) == 0, survivor.output()
    assert "Traceback" not in survivor.output(), survivor.output()
    ts = trials(any_url, "toy")
    continuations = _check_continued_once(any_url, ts)
    # the survivor promoted what the decider had chosen (the best of the first three)
    best = min(paused, key=lambda t: t.intermediate_values[1])
    assert any(c.user_attrs["promotion_of"] == best.number for c in continuations)
    assert Budget(connect(any_url).engine, "toy").state().taken == 9
    assert len({lineage(t) for t in ts}) == 9
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert done and all(sorted(t.intermediate_values) == list(range(1, 10)) for t in done)
    for c in continuations:  # each resumed from its paused segment's checkpoint
        rung = next(t for t in ts if t.number == c.user_attrs["promotion_of"]).user_attrs[
            PAUSED_ATTR]
        assert c.user_attrs["start_epoch"] == rung + 1


@pytest.mark.slow
@pytest.mark.parametrize(("any_url", "nth"), [("sqlite", 1), ("sqlite", 3), ("postgresql", 3),
                                             ("mysql", 1)], indirect=["any_url"])
def test_a_pbt_decider_killed_between_continuations_leaves_the_generation_undecided(
        any_url, tmp_path, nth):
    """A worker killed while enqueueing a generation's continuations (after the first or the
    third of four, before the commit): the generation is undecided, and another worker
    decides and finishes it. Once, each continuation was its own transaction: the members
    not yet enqueued stayed paused for ever, and the other workers waited on them."""
    from tuner.storage import PBT_ATTR, Budget, connect, lineage

    study = write_study(tmp_path, trials=4, epochs=3, sleep=0.02)  # generations 1 and 2
    study.write_text(study.read_text().replace("pruner: none", "scheduler: {name: pbt, "
                                               "population: 4, interval: 1, perturb: [x]}"))
    decider, marker = _start_dying_decider(study, any_url, tmp_path, "INSERT INTO TRIALS", nth)
    assert decider.wait(120) == -signal.SIGKILL, decider.output()
    assert marker.read_text().lstrip().upper().startswith("INSERT INTO TRIALS")
    ts = trials(any_url, "toy")
    assert _decisions(any_url) == []
    assert len(ts) == 4 and all(t.state == TrialState.PRUNED for t in ts)  # paused at 1
    survivor = start_worker("toy", any_url, tmp_path, "survivor")
    assert wait_or_dump(survivor, 120, any_url) == 0, survivor.output()
    assert "Traceback" not in survivor.output(), survivor.output()
    ts = trials(any_url, "toy")
    continuations = _check_continued_once(any_url, ts)
    for g in (1, 2):  # each member continued once per generation; one of four exploited
        at_g = [c for c in continuations if c.user_attrs[PBT_ATTR]["epoch"] == g]
        assert sorted(lineage(c) for c in at_g) == [0, 1, 2, 3]
        assert len([c for c in at_g if c.user_attrs[PBT_ATTR]["donor"] is not None]) == 1
    assert Budget(connect(any_url).engine, "toy").state().taken == 4
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert sorted(lineage(t) for t in done) == [0, 1, 2, 3]
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in done)
