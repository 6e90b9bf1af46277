"""The CLI end to end: real SQLite files, real training on tiny data, CliRunner and subprocess."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuner.cli import app

runner = CliRunner()
ROOT = Path(__file__).parent.parent

MNIST_STUDY = """
name: tiny_mnist
data: mnist
epochs: 2
trials: 3
sampler: {name: tpe, n_startup_trials: 2}
pruner: median
space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: [32, 64]
  depth: {type: int, low: 1, high: 2}
  width: {type: int, low: 16, high: 64, log: true}
  activation: [relu, gelu]
  weight_decay: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
"""


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    f = tmp_path / "tiny_mnist.yaml"
    f.write_text(MNIST_STUDY)
    return f


@pytest.fixture
def env(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    monkeypatch.setenv("TUNER_STORAGE", url)
    monkeypatch.setenv("TUNER_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    return url


def invoke(*args: str) -> object:
    return runner.invoke(app, [*args], catch_exceptions=False)


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())


def test_help_does_not_import_torch() -> None:
    code = "import sys; from tuner.cli import app; assert 'torch' not in sys.modules; " \
           "assert 'optuna' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run([sys.executable, "-m", "tuner", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "run" in result.stdout


def test_run_then_run_again_resumes_to_six_trials(study_file: Path, env: str, tmp_path: Path) -> None:
    r = invoke("run", str(study_file), "--trials", "3", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert "3 finished" in r.output
    r = invoke("run", str(study_file), "--trials", "3", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    c = counts(tmp_path / "tuner.db")
    assert c.get("COMPLETE", 0) + c.get("PRUNED", 0) == 6
    # the spec lives in the study: resume needs no file, and the budget grows explicitly
    r = invoke("resume", "tiny_mnist", "--trials", "1", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    c = counts(tmp_path / "tuner.db")
    assert c.get("COMPLETE", 0) + c.get("PRUNED", 0) == 7

    # inspect: studies, trials (table, csv, json), best, status
    r = invoke("studies")
    assert r.exit_code == 0 and "tiny_mnist" in r.output
    rows = json.loads(invoke("trials", "tiny_mnist", "--format", "json").output)
    assert [row["number"] for row in rows] == list(range(7))
    assert all(row["state"] in ("COMPLETE", "PRUNED") for row in rows)
    assert all("params_lr" in row for row in rows)
    csv_out = invoke("trials", "tiny_mnist", "--format", "csv").output
    assert csv_out.splitlines()[0].startswith("number,state,value")
    assert len(csv_out.strip().splitlines()) == 8
    best = json.loads(invoke("best", "tiny_mnist", "--json").output)
    values = [row["value"] for row in rows if row["state"] == "COMPLETE"]
    assert best["value"] == max(values)
    assert best["value"] > 0.3  # well above chance (0.1) on the learnable tiny MNIST
    r = invoke("status", "tiny_mnist")
    assert r.exit_code == 0 and "7/7 finished" in r.output

    # nothing more to do: the budget is spent
    r = invoke("run", str(study_file), "--device", "cpu", "-q")
    assert r.exit_code == 0 and "budget spent" in r.output


def test_trials_record_learning_curves_and_facts(study_file: Path, env: str) -> None:
    import optuna

    from tuner.storage import train_losses

    assert invoke("run", str(study_file), "--trials", "2", "--device", "cpu", "-q").exit_code == 0
    study = optuna.load_study(study_name="tiny_mnist", storage=env)
    for t in study.trials:
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        a = t.user_attrs
        assert a["epochs_run"] == len(t.intermediate_values)
        # per epoch in a system attr (a list widens optuna-dashboard's page); the last one
        # in the user attrs, with what tuner did with the trial
        assert len(train_losses(t)) == a["epochs_run"]
        assert a["train_loss"] == train_losses(t)[-1]
        assert a["tuner_state"] in ("complete", "pruned")
        assert a["device"] == "cpu" and a["seed"] == t.number and a["param_count"] > 0
        assert {"torch", "optuna", "tuner"} <= set(a["versions"])
        assert a["wall_time_s"] > 0


def test_changed_study_file_is_refused_unless_forced(study_file: Path, env: str, tmp_path: Path) -> None:
    assert invoke("run", str(study_file), "--trials", "1", "--device", "cpu", "-q").exit_code == 0
    study_file.write_text(MNIST_STUDY.replace("high: 2}", "high: 3}"))
    before = counts(tmp_path / "tuner.db")
    r = invoke("run", str(study_file), "--trials", "1", "--device", "cpu", "-q")
    assert r.exit_code == 2
    assert "different study file (changed: space)" in r.output and "--force" in r.output
    assert counts(tmp_path / "tuner.db") == before
    r = invoke("run", str(study_file), "--trials", "1", "--device", "cpu", "-q", "--force")
    assert r.exit_code == 0, r.output
    # another name makes another study
    r = invoke("run", str(study_file), "--study", "other", "--trials", "1", "--device", "cpu", "-q")
    assert r.exit_code == 0 and "other" in invoke("studies").output


def test_check_prints_the_space() -> None:
    r = invoke("check", str(ROOT / "search_spaces" / "fashion_mnist_mlp.yaml"))
    assert r.exit_code == 0
    assert "momentum" in r.output and "optimizer in" in r.output and "width_0" in r.output


def test_delete_asks_first(study_file: Path, env: str, tmp_path: Path) -> None:
    assert invoke("run", str(study_file), "--trials", "1", "--device", "cpu", "-q").exit_code == 0
    r = runner.invoke(app, ["delete", "tiny_mnist"], input="n\n")
    assert r.exit_code == 1 and "tiny_mnist" in invoke("studies").output
    r = runner.invoke(app, ["delete", "tiny_mnist", "--yes"])
    assert r.exit_code == 0 and "tiny_mnist" not in invoke("studies").output


BAD_FILES = {
    "malformed.yaml": ("space: {lr: [1, 2\n", "malformed YAML"),
    "unknown_key.yaml": ("epochz: 3\n", "did you mean 'epochs'"),
    "low_high.yaml": ("space: {lr: {type: float, low: 1, high: 0.1}}\n", "greater than high"),
    "log_zero.yaml": ("space: {lr: {type: float, low: 0, high: 1, log: true}}\n", "low > 0"),
    "dataset.yaml": ("data: imagenet\n", "unknown dataset 'imagenet'"),
    "activation.yaml": ("space: {activation: [relu, swish]}\n", "unknown activation 'swish'"),
    "optimizer.yaml": ("space: {optimizer: adamm}\n", "did you mean 'adam'"),
    "sampler.yaml": ("sampler: bayes\n", "unknown value 'bayes'"),
    "pruner.yaml": ("pruner: bohb\n", "unknown value 'bohb'"),
    # every count and rate tuner's own loop and models read is checked before any write
    "batch_size.yaml": ("space: {batch_size: [0]}\n", "batch_size must be >= 1 (got 0)"),
    "width.yaml": ("space: {width: {type: int, low: 0, high: 64}}\n", "width must be >= 1"),
    "depth.yaml": ("space: {depth: -1}\n", "depth must be >= 0"),
    "epochs_param.yaml": ("space: {epochs: [0, 2]}\n", "epochs must be >= 1"),
    "lr.yaml": ("space: {lr: 0}\n", "lr must be > 0"),
    "dropout.yaml": ("space: {dropout: {type: float, low: 0.2, high: 1.0}}\n", "dropout must be < 1"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_study_files_give_one_line_and_exit_2(name: str, tmp_path: Path, env: str,
                                                  study_file: Path) -> None:
    # a study already saved must be untouched by the failed command
    assert invoke("run", str(study_file), "--trials", "1", "--device", "cpu", "-q").exit_code == 0
    before = counts(tmp_path / "tuner.db")
    text, message = BAD_FILES[name]
    bad = tmp_path / name
    bad.write_text(text)
    for cmd in (["run", str(bad), "--device", "cpu"], ["check", str(bad)]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, r.output
        assert message in r.output
        assert "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert counts(tmp_path / "tuner.db") == before


def test_progress_names_the_metric_and_the_best_trial() -> None:
    from rich.console import Console

    from tuner.cli.progress import ProgressView
    from tuner.runtime.worker import Event

    console = Console(record=True, width=120)
    view = ProgressView(console, "s", "accuracy", "maximize", 3, 0, 5)
    view.event(Event("started", 6))
    view.event(Event("finished", 6, value=0.9825, state="COMPLETE"))
    console.print(view._render())
    assert "best accuracy 0.9825 (trial 6)" in console.export_text()
    # an ASHA/PBT segment that pauses is not a finished trial: its member goes on later
    view.event(Event("started", 7))
    view.event(Event("finished", 7, state="PAUSED"))
    assert (view.state.done, view.state.pruned, view.state.paused) == (1, 0, 1)
    assert 7 not in view.state.running


def test_a_binary_study_file_is_one_line_and_exit_2(tmp_path: Path, env: str) -> None:
    bad = tmp_path / "model.yaml"
    bad.write_bytes(bytes(range(256)) * 4)  # not UTF-8 text
    for cmd in (["run", str(bad), "--device", "cpu"], ["check", str(bad)]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, r.output
        assert "not a UTF-8 text file" in r.output and str(bad) in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "tuner.db").exists()


@pytest.mark.parametrize(("url", "message"), [
    ("notaurl", "malformed storage URL"),
    ("oracle://x@y/z", "unsupported storage"),
    ("sqlite:////no/such/folder/t.db", "does not exist"),
    ("postgresql://nobody@127.0.0.1:1/db", "cannot open storage"),
])
def test_bad_storage_url(url: str, message: str, study_file: Path, mnist_dir: Path) -> None:
    r = runner.invoke(app, ["run", str(study_file), "--storage", url, "--device", "cpu",
                            "--data-dir", str(mnist_dir)])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_missing_study_and_bad_device(env: str, study_file: Path) -> None:
    for cmd in (["resume", "nope"], ["best", "nope"], ["trials", "nope"], ["status", "nope"],
                ["delete", "nope", "--yes"], ["worker", "nope"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2 and "no study named 'nope'" in r.output, (cmd, r.output)
        assert "tuner studies" in r.output
    r = runner.invoke(app, ["run", str(study_file), "--device", "tpu"])
    assert r.exit_code == 2 and "unknown device" in r.output


def test_missing_data_names_where_to_put_it(study_file: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TUNER_DATA_DIR", str(empty))
    monkeypatch.setenv("TUNER_STORAGE", f"sqlite:///{tmp_path / 't.db'}")
    monkeypatch.setenv("TUNER_DOWNLOAD", "0")
    r = runner.invoke(app, ["run", str(study_file), "--device", "cpu", "-q"])
    assert r.exit_code == 2, r.output
    assert str(empty) in r.output and "TUNER_DATA_DIR" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.slow
def test_subprocess_run_shows_progress_and_exits_zero(study_file: Path, env: str, tmp_path: Path) -> None:
    tuner = shutil.which("tuner") or str(Path(sys.executable).parent / "tuner")
    result = subprocess.run(
        [tuner, "run", str(study_file), "--trials", "2", "--device", "cpu"],
        capture_output=True, text=True, env=os.environ, timeout=240, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "2/2" in result.stdout and "best accuracy" in result.stdout
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr
