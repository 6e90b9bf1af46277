"""Asynchronous Hyperband with promotion (tuner.schedules.async_hyperband): ASHA in several
brackets of minimum epochs; each lineage pauses at its own bracket's rungs and is promoted
among its bracket only. A real worker process on SQLite; the trainer is
tests/tuner_procs.py's (value x + epoch/100, minimized)."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState
from tuner_procs import assert_clean, assert_refused, start_worker, trials, write_study

from tuner import schedules
from tuner.config import parse_spec
from tuner.storage import PAUSED_ATTR, PROMOTION_OF_ATTR, lineage


def ahb_study(tmp: Path, *, trials: int, epochs: int, min_epochs: int = 1) -> Path:
    path = write_study(tmp, trials=trials, epochs=epochs, sleep=0.02)
    path.write_text(path.read_text().replace(
        "pruner: none",
        f"pruner: {{name: async_hyperband, min_epochs: {min_epochs}, reduction_factor: 3}}"))
    return path


def test_brackets_start_at_min_epochs_times_powers_of_eta() -> None:
    raw = {"name": "s", "data": "digits", "epochs": 9,
           "pruner": {"name": "async_hyperband", "min_epochs": 1, "reduction_factor": 3}}
    ahb = schedules.of(parse_spec(raw))
    assert ahb.brackets() == 3  # starting at 1, 3 and 9 epochs
    assert [list(ahb.pause_epochs(n)) for n in range(4)] == [[1, 3], [3], [], [1, 3]]
    ahb = schedules.of(parse_spec({**raw, "epochs": 10}))
    assert [list(ahb.pause_epochs(n)) for n in range(3)] == [[1, 3, 9], [3, 9], [9]]


def test_bad_async_hyperband_is_one_line_exit_2_nothing_written(tmp_path: Path) -> None:
    path = ahb_study(tmp_path, trials=3, epochs=3, min_epochs=3)
    assert_refused(path, tmp_path, "async_hyperband's min_epochs (3) must be below epochs (3)")


@pytest.mark.slow
def test_a_worker_pauses_each_lineage_at_its_brackets_rungs_and_promotes_within_it(
        tmp_path: Path) -> None:
    study = ahb_study(tmp_path, trials=9, epochs=9)  # brackets: rungs 1, 3 | 3 | none
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    p = start_worker(str(study), url, tmp_path, "worker0")
    assert p.wait(180) == 0, p.output()
    assert_clean(p.output(), "worker 0")
    ts = trials(url, "toy")
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({lineage(t) for t in ts}) == 9
    rungs = {0: {1, 3}, 1: {3}, 2: set()}
    for t in ts:  # a segment pauses only at a rung of its own bracket
        if PAUSED_ATTR in t.user_attrs:
            assert t.user_attrs[PAUSED_ATTR] in rungs[lineage(t) % 3], (lineage(t), t.user_attrs)
    # the last bracket never pauses: its three lineages train all 9 epochs in one segment
    for n in (2, 5, 8):
        (only,) = [t for t in ts if lineage(t) == n]
        assert only.state == TrialState.COMPLETE and sorted(only.intermediate_values) == list(
            range(1, 10))
    # bracket 0 (lineages 0, 3, 6) promotes the best third of its rung 1: the lowest x
    first = {n: next(t for t in ts if lineage(t) == n).intermediate_values[1] for n in (0, 3, 6)}
    best = min(first, key=first.get)
    by_number = {t.number: t for t in ts}
    promoted = {(lineage(t), by_number[t.user_attrs[PROMOTION_OF_ATTR]].user_attrs[PAUSED_ATTR])
                for t in ts if PROMOTION_OF_ATTR in t.user_attrs}
    assert (best, 1) in promoted
    assert not {(n, 1) for n in (0, 3, 6) if n != best} & promoted
    # each bracket finished at least one trial, and no checkpoint is left behind
    done = {lineage(t) % 3 for t in ts if t.state == TrialState.COMPLETE}
    assert done == {0, 1, 2}
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))
