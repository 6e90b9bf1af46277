"""The user's own model, data and trainer, named by import path: resolving them, the one-line
errors when they are wrong (before anything is written), and what reaches them in a study."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuner import usercode
from tuner.cli import app
from tuner.errors import UserCodeError

runner = CliRunner()

# tiny user code, written into a temporary folder beside the study files
NETS = '''
from torch import nn

def build(params, input_shape, num_outputs):
    # conditional and per-layer values arrive as plain names
    depth = params["depth"]
    widths = [params[f"width_{i}"] for i in range(depth)]
    assert not any(f"width_{i}" in params for i in range(depth, 10)), params
    assert ("momentum" in params) == (params["optimizer"] == "sgd_momentum"), params
    assert params["my_knob"] in ("a", "b"), params  # any name reaches user code
    layers, fan_in = [nn.Flatten()], input_shape[0]
    for w in widths:
        layers += [nn.Linear(fan_in, w), nn.ReLU()]
        fan_in = w
    return nn.Sequential(*layers, nn.Linear(fan_in, num_outputs))

def too_few(params, input_shape, num_outputs):
    return nn.Linear(input_shape[0], 3)

def crash(params, input_shape, num_outputs):
    raise RuntimeError("cannot build this")

def one_arg(params):
    return nn.Linear(4, 2)

not_a_function = 3
'''

DATA = '''
import torch

def blobs(seed=0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(240, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return (x[:200], y[:200]), (x[200:], y[200:])

def broken():
    raise OSError("disk on fire")

def junk():
    return "not data"

def needs_arg(path):
    return None
'''

TRAIN = '''
def fit(params, ctx):
    for epoch in range(1, ctx.max_epochs + 1):
        ctx.report(epoch, params["x"] * epoch / ctx.max_epochs)
    if ctx.trial_number == 1:
        raise ValueError("trial one goes wrong\\nthe last line says why")
    return params["x"]

def always_fails(params, ctx):
    raise KeyError("missing_column")

def no_ctx(params):
    return 1.0
'''


@pytest.fixture
def code(tmp_path: Path) -> Path:
    for name, text in (("nets.py", NETS), ("userdata.py", DATA), ("usertrain.py", TRAIN)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "tuner.db"
    monkeypatch.setenv("TUNER_STORAGE", f"sqlite:///{db}")
    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("TUNER_DATA_DIR", str(tmp_path / "nodata"))
    monkeypatch.setenv("TUNER_DOWNLOAD", "0")
    return db


def study(folder: Path, name: str, body: str) -> Path:
    f = folder / f"{name}.yaml"
    f.write_text(f"name: {name}\n" + textwrap.dedent(body))
    return f


def rows(db: Path) -> tuple[int, ...]:
    """Studies, trials, attributes and budgets stored: what a refused command must not touch."""
    with sqlite3.connect(db) as conn:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in
                     ("studies", "trials", "study_user_attributes", "tuner_budgets"))


# ---- resolving -----------------------------------------------------------------------------
def test_resolve_file_and_module_paths(code: Path) -> None:
    build = usercode.resolve("nets.py:build", "model", str(code))
    assert build.__name__ == "build"
    # a module path is imported with the study file's folder on sys.path, then it is removed
    fit = usercode.resolve("usertrain:fit", "trainer", str(code))
    assert fit.__name__ == "fit" and str(code) not in sys.path
    # an absolute file path ignores the folder
    assert usercode.resolve(f"{code}/userdata.py:blobs", "data", "/elsewhere").__name__ == "blobs"


@pytest.mark.parametrize(("path", "role", "message"), [
    ("nosuchpkg.nets:build", "model", "no module named 'nosuchpkg'"),
    ("nets.py:nope", "model", "has no attribute 'nope'"),
    ("missing.py:build", "model", "no file"),
    ("nets.py:one_arg", "model",
     "takes (params); expected build(params, input_shape, num_outputs)"),
    ("nets.py:not_a_function", "model", "is a int, not a function"),
    ("usertrain.py:no_ctx", "trainer", "expected fit(params, ctx) -> float"),
    ("userdata.py:needs_arg", "data", "takes (path); expected load()"),
    ("__main__:not_here", "trainer", "defined in a notebook or script"),
])
def test_resolve_errors_name_the_problem(code: Path, path: str, role: str, message: str) -> None:
    with pytest.raises(UserCodeError) as e:
        usercode.resolve(path, role, str(code))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_imports_a_missing_package(code: Path) -> None:
    (code / "needs.py").write_text("import not_installed_pkg\n\ndef build(p, s, n):\n    pass\n")
    with pytest.raises(UserCodeError, match="imports 'not_installed_pkg', which is not installed"):
        usercode.resolve("needs.py:build", "model", str(code))
    (code / "syntax.py").write_text("def build(p, s, n)\n    pass\n")
    with pytest.raises(UserCodeError, match="importing .*syntax.py failed: SyntaxError"):
        usercode.resolve("syntax.py:build", "model", str(code))


def test_loaders_get_seed_and_data_dir_only_if_they_ask() -> None:
    def plain():
        return "plain"

    def both(data_dir, seed=1):
        return data_dir, seed

    usercode.check_signature(both, "data", "data: both")
    assert usercode.call_loader(plain, seed=3, data_dir="d") == "plain"
    assert usercode.call_loader(both, seed=3, data_dir="d") == ("d", 3)


def test_import_path_of_functions() -> None:
    from tuner.training import train

    assert usercode.import_path(train.fit, "trainer") == "tuner.training.train:fit"
    with pytest.raises(UserCodeError, match="expected fit"):
        usercode.import_path(usercode.one_line, "trainer")
    with pytest.raises(UserCodeError, match="top level of a module"):
        usercode.import_path(lambda p, s, n: None, "model")
    assert usercode.in_main("__main__:fit") and not usercode.in_main("nets.py:fit")


# ---- bad user code through the CLI: one line, exit 2, nothing written ------------------------
GOOD = """
trainer: usertrain.py:fit
task: regression
metric: mse
epochs: 1
trials: 1
space: {x: {type: float, low: 1, high: 2}}
"""
MODEL_STUDY = """
data: {data}
model: {model}
task: classification
epochs: 1
space: {{lr: 0.01}}
"""
BAD = {
    "missing_module": (dict(data="userdata.py:blobs", model="nosuchpkg.nets:build"),
                       "no module named 'nosuchpkg'"),
    "missing_attribute": (dict(data="userdata.py:blobs", model="nets.py:nope"),
                          "nets.py has no attribute 'nope'"),
    "missing_file": (dict(data="userdata.py:blobs", model="nope/nets.py:build"), "no file"),
    "wrong_signature": (dict(data="userdata.py:blobs", model="nets.py:one_arg"),
                        "expected build(params, input_shape, num_outputs)"),
    "wrong_output": (dict(data="userdata.py:blobs", model="nets.py:too_few"),
                     "returns shape (2, 3) for a batch of 2; a classification model here must "
                     "return (batch, 2)"),
    "model_raises": (dict(data="userdata.py:blobs", model="nets.py:crash"),
                     "failed on a sample batch of userdata.py:blobs: RuntimeError: cannot build"),
    "builtin_cnn_on_tables": (dict(data="userdata.py:blobs", model="cnn"),
                              "the cnn model needs image inputs"),
    "loader_raises": (dict(data="userdata.py:broken", model="mlp"),
                      "data: userdata.py:broken raised OSError: disk on fire"),
    "loader_returns_junk": (dict(data="userdata.py:junk", model="mlp"),
                            "the data loader returned a str"),
    "trainer_signature": ("trainer: usertrain.py:no_ctx\ntask: regression\n",
                          "expected fit(params, ctx) -> float"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_user_code_gives_one_line_exit_2_and_writes_nothing(case: str, code: Path,
                                                                 env: Path) -> None:
    r = runner.invoke(app, ["run", str(study(code, "good", GOOD)), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    before = rows(env)
    spec, message = BAD[case]
    body = spec if isinstance(spec, str) else MODEL_STUDY.format(**spec)
    bad = study(code, case, body)
    for cmd in (["run", str(bad), "--device", "cpu", "--trials", "2"],
                ["worker", str(bad), "--device", "cpu"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, r.output
        assert message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert rows(env) == before


# ---- what reaches user code, and failing trials ----------------------------------------------
def test_conditional_and_per_layer_params_reach_a_user_model(
        code: Path, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    f = study(code, "space", """
        data: userdata.py:blobs
        model: nets.py:build
        task: classification
        epochs: 1
        trials: 8
        sampler: random
        pruner: none
        space:
          depth: {type: int, low: 1, high: 3}
          width: {type: int, low: 4, high: 16, per_layer: depth}
          optimizer: [adam, sgd_momentum]
          momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgd_momentum}}
          my_knob: [a, b]
          lr: 0.01
        """)
    r = runner.invoke(app, ["run", str(f), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    # resumed from the database alone (the spec stored in the study keeps the space's order:
    # momentum refers to optimizer above it), from another folder
    (env.parent / "elsewhere").mkdir()
    monkeypatch.chdir(env.parent / "elsewhere")
    r = runner.invoke(app, ["resume", "space", "--trials", "2", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    trials = optuna.load_study(study_name="space", storage=f"sqlite:///{env}").trials
    # the model asserts what it gets: a failed assertion would have failed the trial
    assert [t.state.name for t in trials] == ["COMPLETE"] * 10, [
        t.user_attrs.get("fail_reason") for t in trials]
    depths = {t.params["depth"] for t in trials}
    assert len(depths) > 1 and {t.params["optimizer"] for t in trials} == {"adam", "sgd_momentum"}
    for t in trials:
        assert sorted(k for k in t.params if k.startswith("width_")) == [
            f"width_{i}" for i in range(t.params["depth"])]


def test_a_failing_trial_fails_alone_and_the_study_goes_on(code: Path, env: Path) -> None:
    import optuna

    f = study(code, "flaky", GOOD.replace("trials: 1", "trials: 3")
              .replace("epochs: 1", "epochs: 2"))
    r = runner.invoke(app, ["run", str(f), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    trials = optuna.load_study(study_name="flaky", storage=f"sqlite:///{env}").trials
    # a failed trial gives its budget slot back: 3 complete trials, and trial 1 failed
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    # the whole message is kept (issue 15: the real cause, not only its last line)
    assert trials[1].user_attrs["fail_reason"] == "ValueError: trial one goes wrong | the last line says why"
    assert sorted(trials[1].intermediate_values) == [1, 2]  # its curve is kept


def test_failures_in_a_row_stop_the_study_with_one_line(code: Path, env: Path) -> None:
    f = study(code, "doomed", GOOD.replace("usertrain.py:fit", "usertrain.py:always_fails")
              .replace("trials: 1", "trials: 10"))
    r = runner.invoke(app, ["run", str(f), "--device", "cpu", "-q"])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert "3 trials failed in a row (last: KeyError: 'missing_column')" in lines[0]
    assert "tuner resume doomed" in lines[0]
    with sqlite3.connect(env) as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'FAIL'").fetchone()[0] == 3
