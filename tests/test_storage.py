"""Storage URLs, the schema race, atomic claims of waiting trials, batched attrs, heartbeats."""

from __future__ import annotations

import threading

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from tuner.errors import StorageError
from tuner.storage import (
    Heartbeat,
    claim,
    connect,
    heartbeat_ages,
    normalize_url,
    record_heartbeat,
    set_user_attrs,
)

pytest_plugins = ["servers"]
pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


@pytest.mark.parametrize(("url", "driver"), [
    ("postgresql://u@h/db", "postgresql+psycopg"),
    ("mysql://u@h/db", "mysql+pymysql"),
    ("mariadb://u@h/db", "mysql+pymysql"),
    ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2"),  # a driver given is kept
])
def test_urls_get_the_drivers_tuner_ships(url, driver):
    assert normalize_url(url).drivername == driver


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "malformed storage URL"),
    ("oracle://u@h/db", "unsupported storage 'oracle'"),
    ("sqlite://", "in-memory"),
    ("sqlite:///no/such/folder/t.db", "does not exist"),
])
def test_bad_urls_say_how_to_fix_them(url, message):
    with pytest.raises(StorageError, match=message):
        normalize_url(url)


def test_an_unreachable_server_is_one_clear_error():
    with pytest.raises(StorageError, match="cannot open storage postgresql://u:\\*\\*\\*@127.0.0.1:9"):
        connect("postgresql://u:secret@127.0.0.1:9/db")


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_many_processes_create_the_schema_at_once(any_url):
    """Threads stand in for workers here (tests/test_distributed.py uses processes)."""
    go = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_it() -> None:
        go.wait()
        try:
            connect(any_url).engine.dispose()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    engine = sa.create_engine(normalize_url(any_url), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
        assert "tuner_budgets" in sa.inspect(conn).get_table_names()
    engine.dispose()


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_one_waiting_trial_is_claimed_by_one_worker(any_url):
    """The read-check-write of a claim is one transaction: on SQLite too (BEGIN IMMEDIATE)."""
    optuna.create_study(study_name="s", storage=connect(any_url))
    for _ in range(5):
        optuna.load_study(study_name="s", storage=connect(any_url)).enqueue_trial({"x": 1})
    studies = [optuna.load_study(study_name="s", storage=connect(any_url))
               for _ in range(6)]
    go = threading.Barrier(len(studies))
    claimed: list[list[int]] = [[] for _ in studies]

    def claim_all(i: int) -> None:
        study = studies[i]
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        go.wait()
        claimed[i] = [t.number for t in waiting if claim(study, t)]

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(studies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(n for c in claimed for n in c) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_user_attrs_are_set_in_one_go(any_url):
    study = optuna.create_study(storage=connect(any_url))
    trial = study.ask()
    set_user_attrs(trial, {"a": 1, "b": {"host": "h"}, "c": [1.5, None]})
    set_user_attrs(trial, {"a": 2, "d": "x" * 2000})  # updates one, adds one
    assert trial.user_attrs == {"a": 2, "b": {"host": "h"}, "c": [1.5, None], "d": "x" * 2000}
    assert study.trials[0].user_attrs == trial.user_attrs
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, {"late": True})


def test_heartbeat_ages_of_running_trials(sqlite_url):
    study = optuna.create_study(storage=connect(sqlite_url, Heartbeat(1, 2)))
    silent, beating = study.ask(), study.ask()
    record_heartbeat(beating)
    ages = heartbeat_ages(study)
    assert set(ages) == {beating.number} and silent.number not in ages
    assert 0 <= ages[beating.number] < 5


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_a_report_is_one_transaction_with_its_heartbeat(any_url):
    """Trial.report writes the value (the storage updates a step written again, as Optuna's
    does) and refreshes the heartbeat; the heartbeat thread's next beat is then left out, and a
    finished trial's report is refused as Optuna refuses it."""
    from tuner.storage import Budget, engine_of, start_trial

    storage = connect(any_url, Heartbeat(5, 20))
    study = optuna.create_study(storage=storage)
    engine = engine_of(study)
    budget = Budget(engine, study.study_name)
    budget.add(1, None)
    trial = start_trial(study, budget)
    hb = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat"))
    with engine.begin() as conn:
        conn.execute(hb.update().values(heartbeat=sa.text("'2000-01-01 00:00:00'")))
    assert heartbeat_ages(study)[trial.number] > 1000
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *a: statements.append(statement))
    trial.report(0.5, 1)
    assert len([s for s in statements if not s.startswith("BEGIN")]) == 3
    assert heartbeat_ages(study)[trial.number] < 60
    statements.clear()
    record_heartbeat(trial)  # the report beat a moment ago
    assert statements == []
    study._storage.set_trial_intermediate_value(trial._trial_id, 1, 0.25)  # as Optuna: updated
    assert study.trials[0].intermediate_values == {1: 0.25}
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        trial.report(0.1, 2)


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_started_trials_are_what_reading_them_back_gives(any_url):
    from tuner.storage import Budget, engine_of, start_trial, start_trials, tell_many

    study = optuna.create_study(storage=connect(any_url))
    budget = Budget(engine_of(study), study.study_name)
    budget.add(4, None)
    trials = [start_trial(study, budget), *start_trials(study, budget, 3)]
    for t in trials:
        read = study._storage._backend.get_trial(t._trial_id)
        assert t._cached_frozen_trial == read
        assert study._storage.get_trial(t._trial_id) == read
    x = trials[0].suggest_float("x", 0.0, 1.0)
    set_user_attrs(trials[0], {"a": 1})
    assert tell_many(study, [(trials[0], TrialState.COMPLETE, [x])]) == [True]
    done = study.trials[trials[0].number]
    assert (done.state, done.value, done.params, done.user_attrs) == (
        TrialState.COMPLETE, x, {"x": x}, {"a": 1})
    study._storage.set_trial_state_values(trials[1]._trial_id, TrialState.FAIL)  # elsewhere
    assert tell_many(study, [(trials[1], TrialState.COMPLETE, [1.0])]) == [False]
    assert study.trials[trials[1].number].state == TrialState.FAIL


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_a_draw_writes_its_params_in_one_transaction(any_url):
    """A space's params drawn inside ``drawing`` are written together with the start attrs
    given, in one transaction, with Optuna's checks: the same params as one by one, a
    distribution that contradicts the study's refused, a finished trial refused; what a draw
    that fails midway drew is kept."""
    from tuner.storage import drawing, engine_of

    study = optuna.create_study(storage=connect(any_url))
    engine = engine_of(study)
    commits, writes = [0], []  # each write's table and the transaction it was in

    def seen(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            writes.append((statement.split()[2].strip('"`'), commits[0]))

    sa.event.listen(engine, "before_cursor_execute", seen)
    sa.event.listen(engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1))
    trial = study.ask()
    writes.clear()
    with drawing(trial, {"worker": {"host": "h", "pid": 1}}):
        drawn = {"lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
                 "depth": trial.suggest_int("depth", 1, 4),
                 "act": trial.suggest_categorical("act", ["relu", "gelu"])}
        assert trial.suggest_int("depth", 1, 4) == drawn["depth"]  # asked twice: one value
        assert study.trials[0].params == {}  # held until the draw ends
    # one statement for the params, one for the attrs, in one transaction
    assert sorted(table for table, _ in writes) == ["trial_params", "trial_user_attributes"]
    assert len({transaction for _, transaction in writes}) == 1
    assert study.trials[0].params == drawn == trial.params
    assert study.trials[0].user_attrs == {"worker": {"host": "h", "pid": 1}} == trial.user_attrs
    study.tell(trial, 1.0)

    second = study.ask()
    with pytest.raises(ValueError, match="dynamic value space"), drawing(second):
        second.suggest_categorical("act", ["relu", "tanh"])  # not the study's choices
    assert study.trials[1].params == {}
    with pytest.raises(RuntimeError, match="midway"), drawing(second):
        second.suggest_int("depth", 1, 4)
        raise RuntimeError("midway")
    assert set(study.trials[1].params) == {"depth"}
    study.tell(second, 2.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError), drawing(second):
        second.suggest_float("late", 0.0, 1.0)


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql"], indirect=True)
def test_closing_attrs_and_the_curve_are_one_transaction(any_url):
    from tuner.storage import TRAIN_LOSS_CURVE_ATTR, engine_of, set_user_attrs_many

    study = optuna.create_study(storage=connect(any_url))
    a, b = study.ask(), study.ask()
    commits: list[int] = []
    sa.event.listen(engine_of(study), "commit", lambda conn: commits.append(1))
    set_user_attrs_many([(a, {"s": 1}), (b, {"s": 2})],
                        system=[(a, {TRAIN_LOSS_CURVE_ATTR: [0.5, 0.25]}), (b, {})])
    assert len(commits) == 1
    assert study.trials[0].system_attrs[TRAIN_LOSS_CURVE_ATTR] == [0.5, 0.25]
    assert [t.user_attrs for t in study.trials] == [{"s": 1}, {"s": 2}]
    study.tell(a, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs_many([], system=[(a, {TRAIN_LOSS_CURVE_ATTR: [9.0]})])
    set_user_attrs_many([(a, {"late": 1})], system=[(a, {"k": 2})], finished=True)
    assert study.trials[0].user_attrs["late"] == 1 and study.trials[0].system_attrs["k"] == 2


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_a_result_its_closing_attrs_and_its_device_time_are_one_transaction(any_url):
    """``tell_many`` writes the closing attrs, the curve and the budget's spend with the
    result; a trial finished meanwhile keeps its worker's attrs and is not told."""
    from tuner.storage import TRAIN_LOSS_CURVE_ATTR, Budget, engine_of, start_trial, tell_many
    from tuner.trial_schema import STATE_ATTR

    study = optuna.create_study(storage=connect(any_url))
    engine = engine_of(study)
    budget = Budget(engine, study.study_name)
    budget.initialize(3, None, 1.0)
    trial, gone = start_trial(study, budget), start_trial(study, budget)
    study._storage.set_trial_state_values(gone._trial_id, TrialState.FAIL)  # the reaper's
    commits, writes = [0], []  # each write and the transaction it was in

    def seen(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            writes.append(commits[0])

    sa.event.listen(engine, "before_cursor_execute", seen)
    sa.event.listen(engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1))
    told = tell_many(study, [(trial, None, [0.9]), (gone, TrialState.COMPLETE, [0.8])],
                     attrs=[({STATE_ATTR: "complete"}, {TRAIN_LOSS_CURVE_ATTR: [0.3]}),
                            ({STATE_ATTR: "complete"}, {})],
                     also=[budget.spend_statement(12.5)])
    assert told == [True, False]
    assert len(writes) >= 4 and len(set(writes)) == 1  # state, value, attrs, spend: one commit
    done, failed = study.trials
    assert (done.state, done.value, done.user_attrs[STATE_ATTR]) == (
        TrialState.COMPLETE, 0.9, "complete")
    assert done.system_attrs[TRAIN_LOSS_CURVE_ATTR] == [0.3]
    assert failed.state == TrialState.FAIL and failed.user_attrs[STATE_ATTR] == "complete"
    assert budget.state().seconds_spent == pytest.approx(12.5)
