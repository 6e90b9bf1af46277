"""PB2 (tuner.schedules.pb2): PBT whose explore step is a time-varying GP bandit. The GP-UCB
choice on observed improvements, its spread within a generation and its fallback; then a
real worker process running a population on SQLite (tests/tuner_procs.py's trainer)."""

from __future__ import annotations

import datetime as dt
import math
import random
from pathlib import Path

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from tuner_procs import assert_clean, start_worker, trials, write_study

from tuner import schedules
from tuner.config import parse_spec
from tuner.schedules.pb2 import PB2
from tuner.storage import PAUSED_ATTR, PBT_ATTR, PROMOTION_OF_ATTR, Budget, connect, lineage
from tuner.trial_schema import LINEAGE_ATTR

LR = FloatDistribution(1e-4, 1e-1, log=True)
SPEC = parse_spec({"name": "s", "data": "digits", "epochs": 9, "metric": "accuracy",
                   "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
                   "scheduler": {"name": "pb2", "population": 12, "interval": 2,
                                 "resample_probability": 0.0}})


def _segment(number: int, lr: float, curve: dict[int, float], paused_at: int) -> FrozenTrial:
    now = dt.datetime.now()
    return FrozenTrial(number=number, state=TrialState.PRUNED, value=None, datetime_start=now,
                       datetime_complete=now, params={"lr": lr}, distributions={"lr": LR},
                       user_attrs={LINEAGE_ATTR: number, PAUSED_ATTR: paused_at}, system_attrs={},
                       intermediate_values=curve, trial_id=number)


def _gain(lr: float) -> float:  # what a segment gains: best near lr = 1e-2
    return 0.3 * math.exp(-((math.log10(lr) + 2) / 0.5) ** 2)


def _population(g: int) -> list[FrozenTrial]:
    lrs = [10 ** (-4 + 3 * i / 11) for i in range(12)]
    return [_segment(i, lr, {2: 0.5, 4: 0.5 + _gain(lr)} if g == 4 else {2: 0.5}, g)
            for i, lr in enumerate(lrs)]


def _view(ts: list[FrozenTrial]) -> schedules.View:
    return schedules.View(lambda: ts, set, lambda: None)


def test_pb2_explores_where_the_gp_expects_the_largest_gain_and_spreads_a_generation() -> None:
    pb2 = schedules.of(SPEC)
    assert isinstance(pb2, PB2) and pb2.population
    ts = _population(4)
    donor = ts[0]  # lr = 1e-4, far from the best region
    params, changes = pb2.explore(donor, _view(ts), 4, random.Random("0:4"), [])
    assert abs(math.log10(params["lr"]) + 2) < 0.75, params  # near 1e-2, not x0.8/x1.2
    assert changes == {"lr": [donor.params["lr"], params["lr"]]}
    assert LR.low <= params["lr"] <= LR.high
    again, _ = pb2.explore(donor, _view(ts), 4, random.Random("0:4"), [])
    assert again == params  # a decider that dies is replaced by one that decides the same
    # a second member exploited in the same generation goes elsewhere (kriging believer)
    second, _ = pb2.explore(donor, _view(ts), 4, random.Random("0:4"), [params])
    assert second["lr"] != params["lr"]


def test_pb2_explores_as_pbt_before_any_gain_is_observed() -> None:
    pb2 = schedules.of(SPEC)
    ts = _population(2)  # the first generation: no segment has a start value yet
    donor = ts[5]
    params, _ = pb2.explore(donor, _view(ts), 2, random.Random("0:2"), [])
    ratio = params["lr"] / donor.params["lr"]
    assert min(abs(ratio - 0.8), abs(ratio - 1.2)) < 1e-9


@pytest.mark.slow
def test_a_worker_runs_a_pb2_population_to_the_end(tmp_path: Path) -> None:
    study = write_study(tmp_path, trials=4, epochs=4, sleep=0.02)  # generations 1, 2 and 3
    study.write_text(study.read_text().replace(
        "pruner: none", "scheduler: {name: pb2, population: 4, interval: 1, perturb: [x]}"))
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    p = start_worker(str(study), url, tmp_path, "worker0")
    assert p.wait(180) == 0, p.output()
    assert_clean(p.output(), "worker 0")
    ts = trials(url, "toy")
    conts = [t for t in ts if PROMOTION_OF_ATTR in t.user_attrs]
    for g in (1, 2, 3):  # each member continued once per generation; one of four exploited
        at_g = [c for c in conts if c.user_attrs[PBT_ATTR]["epoch"] == g]
        assert sorted(lineage(c) for c in at_g) == [0, 1, 2, 3]
        exploits = [c for c in at_g if c.user_attrs[PBT_ATTR]["donor"] is not None]
        assert len(exploits) == 1 and 0.0 <= exploits[0].params["x"] <= 1.0
    assert Budget(connect(url).engine, "toy").state().taken == 4
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert sorted(lineage(t) for t in done) == [0, 1, 2, 3]
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in done)
    assert not list((tmp_path / "checkpoints").rglob("*gen*.pt"))  # snapshots gone
