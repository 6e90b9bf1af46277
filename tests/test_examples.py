"""The examples (examples/*/study.yaml) and search_spaces/diabetes_mlp.yaml, run for real on tiny
data: each level of bring-your-own through the CLI, a subprocess and the Python API, and a
user training loop killed mid-trial that continues from its checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tuner import api, storage, usercode
from tuner.cli import app
from tuner.training.assets import StudyAssets

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
STUDIES = sorted(EXAMPLES.glob("*/study.yaml"))
runner = CliRunner()


def tuner_cmd() -> str:
    return shutil.which("tuner") or str(Path(sys.executable).parent / "tuner")


def shrunk(study: Path, dest: Path, **changes: Any) -> Path:
    """A copy of ``study`` with ``changes``, whose code paths still resolve against the
    example's folder."""
    raw = yaml.safe_load(study.read_text())
    raw.update(base_dir=str(study.parent), **changes)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    monkeypatch.setenv("TUNER_STORAGE", url)
    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("TUNER_DOWNLOAD", "0")
    return url


def test_each_example_has_a_study_file_and_a_readme_entry() -> None:
    assert {p.parent.name for p in STUDIES} == {"resnet_cifar10", "tabular_csv", "training_loop",
                                                "gan_digits"}
    readme = (EXAMPLES / "README.md").read_text()
    for study in STUDIES:
        assert f"examples/{study.parent.name}/study.yaml" in readme
        r = runner.invoke(app, ["check", str(study)])
        assert r.exit_code == 0, r.output


@pytest.mark.parametrize("name", ["tabular_csv", "training_loop"])
def test_examples_code_resolves_and_passes_the_preflight(name: str) -> None:
    spec = api.as_spec(EXAMPLES / name / "study.yaml")
    StudyAssets(spec, device="cpu", data_dir="data").preflight()


# ---- your own model ------------------------------------------------------------------------
TINY_IMAGES = '''
import torch

def load(seed):
    """Random 3x32x32 uint8 images in 10 classes: CIFAR-10's shapes, not its content."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(96) % 10
    return (x[:64], y[:64]), (x[64:], y[64:])
'''


def test_resnet_model_fits_cifar_shapes() -> None:
    build = usercode.resolve("resnet.py:build", "model", str(EXAMPLES / "resnet_cifar10"))
    for params in ({"stages": 2, "channels_0": 8, "channels_1": 16, "blocks": 2},
                   {"stages": 3, "channels_0": 8, "channels_1": 8, "channels_2": 16}):
        assert build(params, (3, 32, 32), 10)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_example_on_tiny_random_images(store: str, tmp_path: Path) -> None:
    (tmp_path / "tiny_images.py").write_text(TINY_IMAGES)
    study = shrunk(EXAMPLES / "resnet_cifar10" / "study.yaml", tmp_path / "resnet.yaml",
                   data=f"{tmp_path}/tiny_images.py:load", task="classification", epochs=1,
                   trials=2, amp=False)
    r = runner.invoke(app, ["run", str(study), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "2 finished" in r.output and "best accuracy" in r.output
    trials = optuna.load_study(study_name="resnet_cifar10", storage=store).trials
    for t in trials:
        assert t.state.name == "COMPLETE", t.user_attrs.get("fail_reason")
        stages = t.params["stages"]
        assert [k for k in t.params if k.startswith("channels_")] == [
            f"channels_{i}" for i in range(stages)]
        assert t.user_attrs["param_count"] > 0


# ---- your own dataset ----------------------------------------------------------------------
def test_tabular_csv_example_in_a_subprocess(store: str, tmp_path: Path) -> None:
    study = shrunk(EXAMPLES / "tabular_csv" / "study.yaml", tmp_path / "houses.yaml",
                   epochs=4, trials=2)
    result = subprocess.run([tuner_cmd(), "run", str(study), "--device", "cpu"],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path,
                            env=os.environ)
    assert result.returncode == 0, result.stderr
    assert "2/2" in result.stdout and "best mae" in result.stdout
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_tabular_csv_example_through_the_api_and_retrained(store: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLES / "tabular_csv" / "study.yaml").read_text())
    raw.update(base_dir=str(EXAMPLES / "tabular_csv"), epochs=5, trials=2)
    result = api.run(raw, storage=store, device="cpu", checkpoint_dir=tmp_path / "ckpt")
    assert result.counts.get("COMPLETE", 0) >= 1
    # prices spread over hundreds (std ~160): even 5 epochs beat guessing the mean
    assert result.best_value < 120
    r = api.retrain("houses_mlp", out=tmp_path / "best", storage=store, device="cpu")
    assert (r.train_samples, r.test_samples) == (320, 80) and r.metrics["mae"] < 120


# ---- your own training loop ----------------------------------------------------------------
def test_training_loop_example_through_the_api(store: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLES / "training_loop" / "study.yaml").read_text())
    raw.update(base_dir=str(EXAMPLES / "training_loop"), epochs=3, trials=2)
    result = api.run(raw, storage=store, device="cpu", checkpoint_dir=tmp_path / "ckpt")
    assert result.counts == {"COMPLETE": 2}
    assert result.best_value > 0.5  # 10 classes: chance is 0.1
    t = result.study.trials[0]
    assert sorted(t.intermediate_values) == [1, 2, 3] and len(storage.train_losses(t)) == 3
    assert not any((tmp_path / "ckpt").rglob("*.pt"))  # finished trials leave no checkpoint


def test_gan_example_tunes_a_loop_that_is_not_classification(store: str, tmp_path: Path) -> None:
    """The GAN's own loop: an Inception-score proxy reported each epoch, checkpoints kept
    while it runs and resumed from, the study's workers and storage as for any loop."""
    raw = yaml.safe_load((EXAMPLES / "gan_digits" / "study.yaml").read_text())
    raw.update(base_dir=str(EXAMPLES / "gan_digits"), epochs=3, trials=2,
               sampler={"name": "random"}, pruner="none")
    result = api.run(raw, storage=store, device="cpu", checkpoint_dir=tmp_path / "ckpt")
    assert result.counts == {"COMPLETE": 2}
    for t in result.study.trials:
        assert sorted(t.intermediate_values) == [1, 2, 3]
        scores = t.user_attrs["inception"]  # the loop's ctx.info, kept on the trial
        assert len(scores) == 3 and all(1.0 <= s <= 10.0 for s in scores)
        assert t.value == pytest.approx(scores[-1] / 10)
    # a retried trial continues from its checkpoint rather than starting over
    fit = usercode.resolve(str(EXAMPLES / "gan_digits" / "train.py") + ":fit", "trainer")
    params = {**result.best_params}
    from tuner.training.context import CheckpointStore, Context

    ckpt = CheckpointStore(tmp_path / "gan.pt")
    first = Context(device=torch.device("cpu"), seed=0, max_epochs=2, checkpoints=ckpt)
    fit(params, first)
    again = Context(device=torch.device("cpu"), seed=0, max_epochs=3, checkpoints=ckpt)
    fit(params, again)
    # epochs 1-2 came from the checkpoint (the curve it saved, before epoch 2's report), and
    # only epoch 3 was trained: its scores go on from the saved ones
    assert [h["epoch"] for h in again.history] == [1, 3]
    assert len(again.info["inception"]) == 3
    assert again.info["inception"][:2] == first.info["inception"]


SLOW_TRAIN = '''
import json, time
from tuner.usercode import resolve

example_fit = resolve("{example}/train.py:fit", "trainer")


def log(**entry):
    with open("{log}", "a") as f:
        f.write(json.dumps(entry) + "\\n")


def fit(params, ctx):
    """The example's loop, watched: what it resumed from, and each epoch (slowed down)."""
    load, report = ctx.load_checkpoint, ctx.report

    def load_checkpoint():
        state = load()
        log(trial=ctx.trial_number, resumed_from=state["epoch"] if state else 0)
        return state

    def slow_report(epoch, value, **extras):
        report(epoch, value, **extras)
        log(trial=ctx.trial_number, epoch=epoch)
        time.sleep(0.5)

    ctx.load_checkpoint, ctx.report = load_checkpoint, slow_report
    return example_fit(params, ctx)
'''


def test_a_killed_user_loop_continues_from_its_checkpoint(store: str, tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    (tmp_path / "slow_train.py").write_text(
        SLOW_TRAIN.format(example=EXAMPLES / "training_loop", log=log))
    study = tmp_path / "killed.yaml"
    study.write_text(yaml.safe_dump({
        "name": "killed", "trainer": "slow_train.py:fit", "task": "classification",
        "epochs": 5, "trials": 1, "pruner": "none",
        "space": {"lr": 0.01, "weight_decay": 1e-4, "batch_size": 64, "hidden": 64,
                  "dropout": 0.1, "label_smoothing": 0.0, "warmup_epochs": 1, "clip": False}}))
    args = ["--device", "cpu", "--heartbeat", "1", "--grace-period", "3", "-q"]

    def entries() -> list[dict[str, int]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    worker = subprocess.Popen([tuner_cmd(), "worker", str(study), *args], env=os.environ)
    deadline = time.monotonic() + 120
    while {"trial": 0, "epoch": 2} not in entries():
        assert worker.poll() is None and time.monotonic() < deadline, entries()
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)  # mid-trial: epoch 2 saved and reported, 3 not begun
    worker.wait()
    time.sleep(4)  # the grace period passes: the next worker retries the silent trial

    # a worker joining from the database alone, elsewhere: paths resolve against base_dir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([tuner_cmd(), "worker", "killed", *args], env=os.environ,
                          cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert entries() == [
        {"trial": 0, "resumed_from": 0}, {"trial": 0, "epoch": 1}, {"trial": 0, "epoch": 2},
        {"trial": 1, "resumed_from": 2},
        {"trial": 1, "epoch": 3}, {"trial": 1, "epoch": 4}, {"trial": 1, "epoch": 5}]
    first, retry = optuna.load_study(study_name="killed", storage=store).trials
    assert (first.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.user_attrs["retry_of"] == 0
    # the learning curve goes on: the retry has the first attempt's epochs, then its own
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4, 5]
    assert retry.intermediate_values[2] == first.intermediate_values[2]
    assert retry.value == retry.intermediate_values[5] > 0.5


# ---- the regression study that ships with tuner -----------------------------------------------
def test_diabetes_study_runs_five_fold_cross_validation(store: str, tmp_path: Path) -> None:
    study = shrunk(ROOT / "search_spaces" / "diabetes_mlp.yaml", tmp_path / "diabetes.yaml",
                   epochs=2, trials=2)
    r = runner.invoke(app, ["run", str(study), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "best mse" in r.output
    s = optuna.load_study(study_name="diabetes_mlp", storage=store)
    assert s.direction.name == "MINIMIZE"
    for t in s.trials:  # the pruner waits for 5 trials: both run every fold
        assert t.state.name == "COMPLETE" and sorted(t.intermediate_values) == [1, 2, 3, 4, 5]
        assert t.value == pytest.approx(t.intermediate_values[5])  # the mean over 5 folds
        assert 0 < t.value < 40_000  # in the target's units (its variance is ~6,000)
    with sqlite3.connect(tmp_path / "tuner.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 2
