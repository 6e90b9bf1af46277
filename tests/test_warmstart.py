"""Warm starts (``--from``) that must not write where they should not: never into a study
that exists (another one, or the old study itself however its storage is spelled), and
with ``constraints:``, the old trials come over with their feasibility. Real SQLite files,
real trials of the toy trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState
from tuner_procs import trials, write_study
from typer.testing import CliRunner

from tuner.cli import app
from tuner.storage import connect

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [*args], catch_exceptions=False, env={"COLUMNS": "200"})


def run_args(path: Path, url: str, tmp: Path, *extra: str) -> list[str]:
    return ["run", str(path), "--storage", url, "--device", "cpu", "--quiet",
            "--checkpoint-dir", str(tmp / "ckpt"), "--data-dir", str(tmp / "data"), *extra]


def _snapshot(url: str, name: str) -> list[tuple]:
    return [(t.number, t.state, t.params, t.values, tuple(sorted(t.user_attrs)))
            for t in trials(url, name)]


@pytest.fixture
def two_studies(tmp_path: Path) -> tuple[str, Path, Path]:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    base = write_study(tmp_path, "base", trials=2, epochs=2, sleep=0.0)
    other = write_study(tmp_path, "other", trials=3, epochs=2, sleep=0.0)
    for path in (base, other):
        assert cli(*run_args(path, url, tmp_path)).exit_code == 0
    return url, base, other


def _refused(result, says: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.output


def test_from_never_writes_into_an_existing_study(two_studies, tmp_path: Path) -> None:
    url, base, _ = two_studies
    before = _snapshot(url, "base")
    _refused(cli(*run_args(base, url, tmp_path, "--from", "other")),
             "study 'base' already exists")
    assert _snapshot(url, "base") == before


def test_from_itself_through_another_spelling_of_its_storage_is_refused(two_studies,
                                                                          tmp_path: Path) -> None:
    url, base, _ = two_studies
    (tmp_path / "sub").mkdir()
    same = f"sqlite:///{tmp_path / 'sub' / '..' / 'tuner.db'}"  # the same file
    (tmp_path / "link.db").symlink_to(tmp_path / "tuner.db")
    before = _snapshot(url, "base")
    for spelled in (same, f"sqlite:///{tmp_path / 'link.db'}"):
        _refused(cli(*run_args(base, url, tmp_path, "--from", "base", "--from-storage", spelled)),
                 "that is the study itself")
    assert _snapshot(url, "base") == before


def test_with_constraints_old_trials_keep_their_feasibility(tmp_path: Path) -> None:
    """The old study had no constraint; the new one wants mse >= 0.5. The toy trainer's mse
    is x + 0.02, so every old trial with x < 0.48 comes over infeasible: ``best`` must pick
    the best trial that meets the constraint, not the old study's best."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    old = write_study(tmp_path, "old", trials=8, epochs=2, sleep=0.0)
    assert cli(*run_args(old, url, tmp_path)).exit_code == 0
    olds = [t for t in trials(url, "old") if t.state == TrialState.COMPLETE]
    assert min(t.value for t in olds) < 0.5 <= max(t.value for t in olds)  # both kinds
    new = tmp_path / "new.yaml"
    new.write_text(old.read_text().replace("name: old", "name: new").replace("trials: 8",
                                                                             "trials: 1")
                   + "constraints:\n  mse: {min: 0.5}\n")
    result = cli(*run_args(new, url, tmp_path, "--from", "old"))
    assert result.exit_code == 0, result.output
    ts = trials(url, "new")
    carried = [t for t in ts if "warm_start_from" in t.user_attrs]
    assert len(carried) == len(olds)
    from tuner import study as st
    from tuner.results.status import Kind, facts, trial_state

    handle = st.load(connect(url), "new")
    known = facts(handle.study, ts, heartbeats=False)
    for t in carried:
        want = Kind.COMPLETE if t.value >= 0.5 else Kind.INFEASIBLE
        assert trial_state(t, known) == want, (t.value, t.constraints)
    best = json.loads(cli("best", "new", "--storage", url, "--json").output)
    assert best["value"] >= 0.5
    feasible = [t.value for t in ts if t.state == TrialState.COMPLETE and t.value >= 0.5]
    assert best["value"] == min(feasible)


@pytest.mark.parametrize(("a", "b", "same"), [
    ("postgresql://postgres@localhost/test", "postgresql+psycopg://postgres@127.0.0.1:5432/test",
     True),
    ("postgresql://postgres@localhost/test", "postgresql://postgres@localhost/other", False),
    ("mysql://root@127.0.0.1/test", "mysql+pymysql://root@localhost:3306/test", True),
    ("mysql://root@127.0.0.1:3307/test", "mysql://root@127.0.0.1:3306/test", False),
    ("postgresql://postgres@localhost/test", "mysql://root@localhost/test", False),
])
def test_same_database_sees_through_the_spelling_of_a_url(a: str, b: str, same: bool) -> None:
    from tuner.storage import same_database

    assert same_database(a, b) is same
