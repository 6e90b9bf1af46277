"""Opening storages: commands that read create and change nothing (a missing or foreign
SQLite file stays as it was, an empty server database gets no tables), and the storage that
``connect`` returns pickles, through a multiprocessing spawn too."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from typer.testing import CliRunner

from tuner.cli import app
from tuner.storage import Heartbeat, connect, normalize_url
from tuner.storage._rdb import record_heartbeat

pytest_plugins = ["servers"]

# every command that only reads, with the study name it asks about
READERS = [["studies"], ["status", "s"], ["trials", "s"], ["best", "s"], ["report", "s"],
           ["dashboard", "--port", "0"]]


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _one_line_exit_2(args: list[str], url: str, tmp_path: Path) -> str:
    r = CliRunner().invoke(app, [*args, "--storage", url], env={"COLUMNS": "200"})
    assert r.exit_code == 2, (args, r.output)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, (args, r.output)
    return lines[0]


@pytest.mark.parametrize("args", READERS, ids=lambda a: a[0])
def test_a_reader_pointed_at_a_missing_file_creates_nothing(args, tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    line = _one_line_exit_2(args, f"sqlite:///{db}", tmp_path)
    assert "no study database" in line and "typo.db" in line
    assert list(tmp_path.iterdir()) == []  # no file, no -wal, no -shm, no report folder


def _foreign_sqlite(path: Path) -> None:
    """Another application's SQLite file, in rollback-journal mode."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("args", READERS, ids=lambda a: a[0])
def test_a_reader_pointed_at_a_foreign_file_leaves_it_as_it_was(args, tmp_path: Path) -> None:
    _foreign_sqlite(tmp_path / "app.db")
    (tmp_path / "notes.txt").write_text("not a database at all\n")
    before = _files(tmp_path)
    line = _one_line_exit_2(args, f"sqlite:///{tmp_path / 'app.db'}", tmp_path)
    assert "holds no studies" in line
    line = _one_line_exit_2(args, f"sqlite:///{tmp_path / 'notes.txt'}", tmp_path)
    assert "is not a SQLite database" in line
    assert _files(tmp_path) == before  # same files, same bytes: no tables, no WAL switch
    conn = sqlite3.connect(tmp_path / "app.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_warm_start_from_a_missing_storage_creates_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndata: digits\nmodel: mlp\nepochs: 1\ntrials: 1\n"
                    "space:\n  lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    line = _one_line_exit_2(["run", str(spec), "--device", "cpu", "--from", "old",
                             "--from-storage", f"sqlite:///{tmp_path / 'old.db'}"],
                            f"sqlite:///{tmp_path / 'new.db'}", tmp_path)
    assert "old.db" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
def test_a_reader_adds_no_tables_to_an_empty_server_database(backend, request,
                                                             tmp_path: Path) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    for args in READERS:
        assert "holds no studies" in _one_line_exit_2(args, url, tmp_path)
    engine = sa.create_engine(normalize_url(url), poolclass=sa.pool.NullPool)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_a_reader_opens_sqlite_read_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    optuna.create_study(study_name="s", storage=connect(url)).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    reader = optuna.load_study(study_name="s", storage=connect(url, access="read"))
    assert len(reader.trials) == 2
    with pytest.raises(Exception, match="readonly|read-only|commit"):
        reader.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(optuna.load_study(study_name="s", storage=connect(url)).trials) == 2


# ---- pickling ----------------------------------------------------------------------------
def _add_trial(storage: optuna.storages.RDBStorage) -> int:
    """In a spawned process: one more trial in study s, through the pickled storage."""
    study = optuna.load_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return len(study.trials)


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_the_storage_pickles_and_works_after(any_url: str) -> None:
    storage = connect(any_url, Heartbeat(1, 2))
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    copy = pickle.loads(pickle.dumps(storage))
    assert len(optuna.load_study(study_name="s", storage=copy).trials) == 1
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_add_trial, (storage,)) == 2
    assert len(study.trials) == 2
    # the stale-trial handler of the copy finds its engine when called: the trial of a
    # worker that stopped beating is failed and its retry queued
    again = optuna.load_study(study_name="s", storage=copy)
    trial = again.ask()
    record_heartbeat(trial)
    time.sleep(3.2)  # past the 2 s grace period
    optuna.storages.fail_stale_trials(again)
    states = [t.state for t in again.get_trials(deepcopy=False)]
    assert states[-2:] == [TrialState.FAIL, TrialState.WAITING]
