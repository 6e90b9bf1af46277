"""The trial runner's package (tuner/trials/) keeps its shape: one function builds a
Context, each module stays small, and the trial schema spells each attribute once."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from optuna.trial import TrialState

from tuner import trial_schema
from tuner.trials import Outcome, fail_reason
from tuner.trials.attrs import tuner_state

ROOT = Path(__file__).parent.parent


def test_one_function_builds_a_context() -> None:
    built = {str(p.relative_to(ROOT)) for p in (ROOT / "tuner").rglob("*.py")
             if re.search(r"\bContext\(", p.read_text()) and p.name != "context.py"}
    # (and context.py's own Context.silent_copy, for fuse: auto's timing runs)
    assert built == {"tuner/trials/contexts.py"}


def test_the_trial_schema_spells_each_name_once() -> None:
    names = {k: v for k, v in vars(trial_schema).items() if k.endswith("_ATTR")}
    assert len(set(names.values())) == len(names)
    assert {"epochs_run", "seed", "metrics", "infeasible", "fail_reason", "tuner_state",
            "repeat_of", "lineage", "paused_at", "pbt"} <= set(names.values())


def test_the_tuner_state_names_what_tuner_did() -> None:
    trial = SimpleNamespace(user_attrs={})
    assert tuner_state(trial, Outcome(TrialState.COMPLETE, 1.0), {}) == "complete"
    assert tuner_state(trial, Outcome(TrialState.COMPLETE, 1.0), {"fused": 2}) == "fused"
    assert tuner_state(trial, Outcome(TrialState.PRUNED, paused=True), {}) == "paused"
    assert tuner_state(trial, Outcome(TrialState.PRUNED, repeat_of=3), {}) == "repeated"
    assert tuner_state(trial, Outcome(TrialState.FAIL, stopped_by_user=True), {}) == "stopped"
    assert tuner_state(SimpleNamespace(user_attrs={"infeasible": "x"}),
                       Outcome(TrialState.PRUNED), {}) == "infeasible"
    assert tuner_state(trial, Outcome(TrialState.FAIL), {}) == "failed"


def test_a_fail_reason_keeps_every_line_of_every_cause_on_one_line() -> None:
    try:
        try:
            raise RuntimeError("CUDA error: device-side assert\nadvice here")
        except RuntimeError as e:
            raise ValueError("the trainer failed") from e
    except ValueError as e:
        assert fail_reason(e) == ("ValueError: the trainer failed <- RuntimeError: CUDA error: "
                                  "device-side assert | advice here")
