"""The study-wide budget: slots taken atomically, given back, added to, and a deadline."""

from __future__ import annotations

import threading

import pytest

from tuner.storage import Budget, BudgetState, connect
from tuner.storage import _budget as budget_mod

pytest_plugins = ["servers"]


@pytest.fixture
def engine(sqlite_url):
    return connect(sqlite_url).engine


def test_a_new_budget_allows_nothing_until_trials_are_added(engine):
    b = Budget(engine, "s")
    assert b.state() == BudgetState(0, 0, None)  # no row yet
    b.ensure()
    b.ensure()  # idempotent
    assert not b.acquire()
    assert b.add(3, None) == BudgetState(3, 0, None)


def test_acquire_takes_slots_until_the_target(engine):
    b = Budget(engine, "s")
    b.add(2, None)
    assert [b.acquire() for _ in range(3)] == [True, True, False]
    assert b.state().remaining == 0


def test_release_gives_a_slot_back(engine):
    b = Budget(engine, "s")
    b.add(1, None)
    assert b.acquire() and not b.acquire()
    b.release()
    assert b.state().taken == 0
    assert b.acquire()
    b.release()
    b.release()  # never below zero
    assert b.state().taken == 0


def test_add_counts_from_the_slots_taken(engine):
    b = Budget(engine, "s")
    b.add(5, None)
    for _ in range(2):
        b.acquire()
    assert b.add(3, None) == BudgetState(5, 2, None)  # 3 more than taken, not than target
    assert b.state().remaining == 3


def test_no_trial_limit(engine):
    b = Budget(engine, "s")
    b.add(None, None)
    assert all(b.acquire() for _ in range(50))
    assert b.state().remaining is None


def test_deadline_stops_new_slots(engine, monkeypatch):
    b = Budget(engine, "s")
    now = 1_000_000.0
    monkeypatch.setattr(budget_mod.time, "time", lambda: now)
    state = b.add(None, 60)
    assert state.deadline == pytest.approx(now + 60)
    assert not state.expired(now + 59) and state.expired(now + 60)
    assert b.acquire()
    now += 61
    assert b.state().expired() and not b.acquire()
    assert b.add(1, 3600).deadline == pytest.approx(now + 3600)  # a new deadline
    assert b.acquire()


def test_initialize_sets_the_first_budget_once(engine):
    b = Budget(engine, "s")
    assert b.initialize(20, None)
    assert not b.initialize(30, None)  # another worker created the study: keep its budget
    assert b.state().target == 20
    late = Budget(engine, "t")
    late.add(5, None)
    assert late.acquire()
    assert not late.initialize(20, None)  # a slot is taken: the study runs already


def test_budgets_of_studies_are_separate(engine):
    a, b = Budget(engine, "a"), Budget(engine, "b")
    a.add(1, None)
    b.add(2, None)
    assert a.acquire() and not a.acquire()
    assert b.acquire() and b.acquire()
    b.delete()
    assert b.state() == BudgetState(0, 0, None) and a.state().taken == 1


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_concurrent_acquires_never_overshoot(any_url):
    """8 threads, each with its own connections, race for 30 slots: exactly 30 succeed."""
    storages = [connect(any_url) for _ in range(8)]
    Budget(storages[0].engine, "race").add(30, None)
    won = [0] * len(storages)
    go = threading.Barrier(len(storages))

    def take(i: int) -> None:
        b = Budget(storages[i].engine, "race")
        go.wait()
        while b.acquire():
            won[i] += 1

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(storages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 30
    assert Budget(storages[0].engine, "race").state().taken == 30
    for s in storages:
        s.engine.dispose()
