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
