"""The schedules' interface (tuner.schedules): each schedule registers itself; the study
file picks one by name; a schedule's verdict after an epoch; importing them (as spec
validation does) imports neither Optuna nor torch."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import optuna
import pytest

from tuner import schedules
from tuner.config import parse_spec
from tuner.errors import SpecError
from tuner.schedules import Schedule, Verdict

BASE = {"name": "s", "data": "digits", "epochs": 9, "metric": "loss",
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}}


def spec(**keys):
    return parse_spec({**BASE, **keys})


def test_the_study_file_picks_each_builtin_schedule_and_its_optuna_pruner() -> None:
    assert {"none", "median", "successive_halving", "hyperband", "asha"} <= set(
        schedules.names("pruner"))
    assert "pbt" in schedules.names("scheduler")
    expect = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
              "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
              "hyperband": optuna.pruners.HyperbandPruner}
    for name, cls in expect.items():
        s = spec(pruner={"name": name})
        assert schedules.of(s).name == name
        assert isinstance(schedules.of(s).pruner(), cls)
    pbt = spec(scheduler={"name": "pbt", "population": 4, "interval": 3})
    assert schedules.of(pbt).name == "pbt" and pbt.trials == 4 and pbt.pruner.name == "none"


def test_an_unknown_schedule_names_the_registered_ones() -> None:
    with pytest.raises(SpecError, match=r"pruner.name: unknown value 'ashaa' \(did you mean "
                                        r"'asha'\?\); use one of .*'median'"):
        spec(pruner={"name": "ashaa"})
    with pytest.raises(SpecError, match=r"scheduler.name: unknown value 'pbtt'.*'pbt'"):
        spec(scheduler={"name": "pbtt"})


def test_asha_pauses_a_finite_report_at_a_rung_and_stops_elsewhere() -> None:
    asha = schedules.of(spec(pruner={"name": "asha", "min_epochs": 1, "reduction_factor": 3}))
    assert list(asha.pause_epochs(0)) == [1, 3]
    assert asha.verdict(0, 1, 0.5, pruned=True) == Verdict.PAUSE
    assert asha.verdict(0, 3, 0.5, pruned=False) == Verdict.CONTINUE
    assert asha.verdict(0, 2, 0.5, pruned=True) == Verdict.STOP
    assert asha.verdict(0, 1, math.nan, pruned=True) == Verdict.STOP  # diverged: no pause
    median = schedules.of(spec(pruner={"name": "median"}))
    assert median.verdict(0, 1, 0.5, pruned=True) == Verdict.STOP
    assert not list(median.pause_epochs(0)) and not list(median.snapshot_epochs(0))
    pbt = schedules.of(spec(scheduler={"name": "pbt", "population": 4, "interval": 3}))
    assert list(pbt.pause_epochs(7)) == list(pbt.snapshot_epochs(7)) == [3, 6]


class _Halt(Schedule):
    """A schedule written in a test: nothing pauses; every trial stops at ``min_epochs``."""

    name = "test_halt"

    def check(self) -> None:
        if self.spec.pruner.min_epochs >= self.spec.epochs:
            raise ValueError("pruner: test_halt's min_epochs must be below epochs")

    def pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.ThresholdPruner(lower=-math.inf,
                                              n_warmup_steps=self.spec.pruner.min_epochs)


@pytest.fixture
def halt() -> Iterator[None]:
    schedules.register(_Halt)
    yield
    schedules.SCHEDULES._entries.pop(_Halt.name)


def test_a_new_schedule_is_one_registered_class(halt: None) -> None:
    """No list elsewhere: the study file accepts it, its check runs at the gate, and the study
    gets its pruner."""
    from tuner.study import build_pruner

    s = spec(pruner={"name": "test_halt", "min_epochs": 2})
    assert isinstance(build_pruner(s), optuna.pruners.ThresholdPruner)
    with pytest.raises(SpecError, match="test_halt's min_epochs must be below epochs"):
        spec(pruner={"name": "test_halt", "min_epochs": 9})


def test_importing_the_schedules_and_spec_imports_neither_optuna_nor_torch() -> None:
    code = ("import sys, tuner.config, tuner.schedules; "
            "bad = [m for m in ('optuna', 'torch', 'sklearn') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
