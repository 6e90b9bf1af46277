"""Every combination of features either works end to end or is refused up front.

The factors are read from where the study file defines them (the sampler and pruner
choices of :class:`~tuner.config.SamplerSpec`, the schedules registered in
:mod:`tuner.schedules` (both blocks, ``pruner:`` and ``scheduler:``), the fields of
:class:`~tuner.config.StopSpec`, ...), so a sampler, schedule or stopping rule added later
joins the matrix without touching this file. An all-pairs set over them (allpairspy) covers
every pair of values at least once in a few dozen studies instead of thousands.

The rows are filtered by the spec's own validation (what `tuner check` runs), so every pair
of values that can run together does, in a tiny study on the two-moons set (2 features, 2
epochs, 3 trials): `run`, `resume --trials 2`, `best`, `trials`, `report` and `retrain` all
succeed, with exactly the budget's trials, none FAILED or left RUNNING, and no configuration
drawn twice. Every pair that cannot is refused by `tuner check` in one line (exit 2) whose
reason README's table of features lists.
"""

from __future__ import annotations

import functools
import json
import re
import traceback
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from allpairspy import AllPairs
from typer.testing import CliRunner

from tuner import schedules
from tuner.cli import app
from tuner.config import SamplerSpec, StopSpec, StudySpec, parse_spec
from tuner.errors import SpecError

TRIALS = 3  # a first run past the model-based samplers' 2 start-up trials; PBT's population
MORE = 2  # resume --trials MORE (on one worker: the first worker's seed again)
EPOCHS = 2


def _choices(model: type, field: str) -> list[Any]:
    """The values a ``Literal`` field of a spec model accepts."""
    return list(typing.get_args(model.model_fields[field].annotation))


def _stop_rules() -> list[dict[str, Any]]:
    """No stopping rule, then each of StopSpec's rules alone, with a value that can fire
    in a tiny study but not during ``resume --trials MORE`` (a patience above MORE)."""
    rules: list[dict[str, Any]] = [{}]
    for name, field in StopSpec.model_fields.items():
        kind = field.annotation
        if isinstance(kind, types.UnionType):  # int | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        rules.append({name: True if kind is bool else MORE + 1})
    return rules


def _fuse_values() -> list[Any]:
    """fuse: its words (off, auto) and a K."""
    words = [w for a in typing.get_args(StudySpec.model_fields["fuse"].annotation)
             for w in typing.get_args(a) if isinstance(w, str)]
    return sorted(words, key=lambda w: w != "off") + [2]


FACTORS: dict[str, list[Any]] = {
    "sampler": _choices(SamplerSpec, "name"),
    "schedule": list(schedules.names("pruner")) + list(schedules.names("scheduler")),
    "objectives": [["accuracy"], ["accuracy", "loss"]],
    "constraints": [{}, {"accuracy": {"min": 0.75}}],
    "fuse": _fuse_values(),
    "validation": [0.2, {"kfold": 2}],
    "workers": [1, 2],
    "dedup": [True, False],
    "stop": _stop_rules(),
}


def _label(c: dict[str, Any]) -> str:
    stop = ",".join(f"{k}-{v}" for k, v in c["stop"].items()) or "nostop"
    return "-".join([
        c["sampler"], c["schedule"], f"{len(c['objectives'])}obj",
        "constr" if c["constraints"] else "free", f"fuse-{c['fuse']}",
        "kfold" if isinstance(c["validation"], dict) else "frac", f"w{c['workers']}",
        "dedup" if c["dedup"] else "nodedup", stop,
    ])


def study_file(c: dict[str, Any]) -> dict[str, Any]:
    """The study file of a combination. The space is continuous (so a repeated configuration
    is a bug, not luck) but for the grid sampler, whose grid is large enough that a repeat
    is one too; the shape is fixed so that fusion applies."""
    if c["sampler"] == "grid":
        space = {"lr": {"type": "float", "low": 0.001, "high": 0.15, "step": 0.001},
                 "weight_decay": {"type": "float", "low": 0.0, "high": 0.01, "step": 0.0001},
                 "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.01}}
    else:
        space = {"lr": {"type": "float", "low": 0.001, "high": 0.15, "log": True},
                 "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
                 "dropout": {"type": "float", "low": 0.0, "high": 0.5}}
    space |= {"depth": 1, "width": 16, "batch_size": 256, "optimizer": "adam"}
    spec: dict[str, Any] = {
        "name": "combo", "data": "moons", "model": "mlp", "epochs": EPOCHS, "trials": TRIALS,
        "seed": 7, "validation": c["validation"], "dedup": c["dedup"], "fuse": c["fuse"],
        "sampler": {"name": c["sampler"]}, "space": space,
    }
    if c["sampler"] not in ("grid", "random"):
        spec["sampler"]["n_startup_trials"] = 2  # past start-up within the budget
    if len(c["objectives"]) == 1:
        spec["metric"] = c["objectives"][0]
    else:
        spec["objectives"] = c["objectives"]
    if c["constraints"]:
        spec["constraints"] = c["constraints"]
    if c["stop"]:
        spec["stop"] = c["stop"]
    if c["schedule"] in schedules.names("scheduler"):
        spec["scheduler"] = {"name": c["schedule"], "population": TRIALS, "interval": 1}
    else:
        spec["pruner"] = {"name": c["schedule"], "min_epochs": 1, "n_startup_trials": 1}
    return spec


BASE = {name: values[0] for name, values in FACTORS.items()}  # each factor's plainest value


@functools.cache
def _refusal(key: str) -> str | None:
    try:
        parse_spec(study_file(json.loads(key)))
    except SpecError as e:
        return str(e)
    return None


def refusal(combo: dict[str, Any]) -> str | None:
    """Why `tuner check` refuses the combination (the validation it runs), or None."""
    return _refusal(json.dumps(combo, sort_keys=True))


def _accepted(row: list[Any]) -> bool:
    """allpairspy's filter: a row so far, its other factors at their plainest, is accepted."""
    return refusal({**BASE, **dict(zip(FACTORS, row, strict=False))}) is None


def _pairs() -> list[dict[str, Any]]:
    """Each pair of values of two factors, the others at their plainest."""
    names = list(FACTORS)
    return [{**BASE, a: x, b: y} for i, a in enumerate(names) for b in names[i + 1:]
            for x in FACTORS[a] for y in FACTORS[b]]


def _covers(combo: dict[str, Any], pair: dict[str, Any]) -> bool:
    return all(combo[k] == v for k, v in pair.items() if v != BASE[k])


def _all_pairs() -> list[dict[str, Any]]:
    """allpairspy's rows, then a row for each pair that can run together and that its
    filter left out (it prunes rows as it builds them)."""
    rows = [dict(zip(FACTORS, r, strict=True))
            for r in AllPairs(list(FACTORS.values()), filter_func=_accepted)]
    for pair in _pairs():
        if refusal(pair) is None and not any(_covers(c, pair) for c in rows):
            rows.append(pair)
    return rows


# every pair of values that can run together runs together in at least one combination
COMBOS = _all_pairs()


# every pair of values that cannot: refused up front, the other factors at their plainest
REFUSED = [c for c in _pairs() if refusal(c) is not None]


def _documented_refusals() -> list[str]:
    """The phrases of README's table of combinations `tuner check` refuses (its last column)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Which features combine", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [phrase for row in rows for phrase in re.findall(r"`([^`]+)`", row.rsplit("|", 2)[1])]


REFUSALS = _documented_refusals()
runner = CliRunner()


def tuner(*args: str) -> tuple[int, str]:
    """Run a tuner command in this process: its exit code and output (with the traceback of
    an exception that escaped it)."""
    r = runner.invoke(app, list(args))
    if r.exc_info is not None and not isinstance(r.exception, SystemExit):
        return r.exit_code, r.output + "".join(traceback.format_exception(*r.exc_info)[-3:])
    return r.exit_code, r.output


def trial_rows(*storage: str) -> list[dict[str, Any]]:
    """`tuner trials combo --format json`: one row per trial."""
    r = runner.invoke(app, ["trials", "combo", "--format", "json", *storage])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _fresh(row: dict[str, Any]) -> bool:
    """A trial that drew its configuration: not a retry, an ASHA promotion or a PBT
    continuation (those carry an earlier trial's configuration on)."""
    return not (row.get("retry_of") is not None or row.get("promotion_of") is not None
                or row.get("pbt"))


def _check_rows(rows: list[dict[str, Any]], budget: int, stopped: bool, what: str) -> int:
    """The study's trials are sound and spend ``budget`` exactly (at most, when a stopping
    rule ended it early); returns how many drew a configuration."""
    states = [r["state"] for r in rows]
    assert "FAIL" not in states, f"{what}: a trial FAILED: " + "; ".join(
        f"#{r['number']}: {r.get('fail_reason')}" for r in rows if r["state"] == "FAIL")
    assert not {"RUNNING", "LOST"} & set(states), f"{what}: left RUNNING: {states}"
    assert not [r for r in rows if r.get("repeat_of") is not None], f"{what}: repeats: {rows}"
    fresh = [r for r in rows if _fresh(r)]
    configs = [json.dumps({k: v for k, v in r.items() if k.startswith("params_")}, sort_keys=True)
               for r in fresh]
    assert len(set(configs)) == len(configs), f"{what}: a configuration was drawn twice: {configs}"
    if stopped:
        assert 0 < len(fresh) <= budget, f"{what}: stopped early after {len(fresh)} of {budget}"
    else:
        assert len(fresh) == budget, f"{what}: {len(fresh)} trials for a budget of {budget}: {states}"
    return len(fresh)


def _write(combo: dict[str, Any], folder: Path) -> Path:
    path = folder / "combo.yaml"
    path.write_text(yaml.safe_dump(study_file(combo), sort_keys=False))
    return path


@pytest.mark.parametrize("combo", REFUSED, ids=[_label(c) for c in REFUSED])
def test_refused_combination(combo: dict[str, Any], tmp_path: Path) -> None:
    """Refused by `tuner check` in one line (exit 2) that README's table lists."""
    path = _write(combo, tmp_path)
    code, output = tuner("check", str(path))
    assert code == 2 and len(output.strip().splitlines()) == 1 and output.startswith("error:"), (
        f"check should refuse in one line (exit 2), got exit {code}:\n{output}")
    assert any(phrase in " ".join(output.split()) for phrase in REFUSALS), (
        f"a refusal README's table of features does not list: {output}")
    assert [p.name for p in tmp_path.iterdir()] == ["combo.yaml"]


@pytest.mark.slow  # about 12 CPU-seconds each: 5 trials, a report's plots, a retrain
@pytest.mark.timeout(600)  # 2 worker processes, 5 trials, a report and a retrain, on a busy machine
@pytest.mark.parametrize("combo", COMBOS, ids=[_label(c) for c in COMBOS])
def test_combination(combo: dict[str, Any], tmp_path: Path) -> None:
    """Runs, resumes, reports and retrains: the exact budget, no trial FAILED or left
    RUNNING, no configuration drawn twice."""
    path = _write(combo, tmp_path)
    code, output = tuner("check", str(path))
    assert code == 0, output
    common = ["--storage", f"sqlite:///{tmp_path / 't.db'}"]
    place = [*common, "--device", "cpu", "--checkpoint-dir", str(tmp_path / "ckpt"),
             "--data-dir", str(tmp_path)]
    workers = ["--workers", str(combo["workers"]), "--quiet"]

    code, output = tuner("run", str(path), *place, *workers)
    assert code == 0, f"run: exit {code}\n{output}"
    ran = _check_rows(trial_rows(*common), TRIALS, "stopped early" in output, "run")

    code, output = tuner("resume", "combo", "--trials", str(MORE), *place, "--quiet")
    assert code == 0, f"resume: exit {code}\n{output}"
    # --trials MORE is MORE more trials, even for a study a stopping rule ended
    _check_rows(trial_rows(*common), ran + MORE, "stopped early" in output, "resume")

    for args in (["best", "combo", *common], ["trials", "combo", *common],
                 # the page and its interactive plots; rendering PNGs (tests/test_report.py)
                 # would be most of a combination's time
                 ["report", "combo", "--out", str(tmp_path / "report"), "--no-png", *common],
                 ["retrain", "combo", "--out", str(tmp_path / "model"), *common, "--device", "cpu"]):
        code, output = tuner(*args)
        assert code == 0, f"{args[0]}: exit {code}\n{output}"
    assert (tmp_path / "report" / "report.html").exists()
    assert (tmp_path / "model" / "model.json").exists()


def test_matrix_covers_every_choice() -> None:
    """Each value of each factor runs, and every pair of values runs together or is
    refused."""
    for name, values in FACTORS.items():
        assert all(v in [c[name] for c in COMBOS] for v in values), name
    refused = {json.dumps(c, sort_keys=True) for c in REFUSED}
    for pair in _pairs():
        assert any(_covers(c, pair) for c in COMBOS) or json.dumps(pair, sort_keys=True) in refused, pair


def test_refusals_are_documented() -> None:
    """Every phrase README's table quotes is still in one of tuner's messages (the source's
    adjacent string literals joined), so the table lists no refusal that is gone."""
    source = "".join(p.read_text() for p in (Path(__file__).parents[1] / "tuner").rglob("*.py"))
    messages = re.sub(r'"\s*\n\s*f?"', "", source)
    assert len(REFUSALS) >= 10, REFUSALS
    assert [p for p in REFUSALS if p not in messages] == []
