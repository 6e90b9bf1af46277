"""tuner retrain: the best trial retrained on train+val, tested once, weights and card kept."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from typer.testing import CliRunner

from tuner.cli import app

# one worker runs the module (pytest-xdist): its module-scoped study is made once
pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.xdist_group("test_retrain")]
runner = CliRunner()

STUDY = """
name: {name}
data: digits
model: mlp
epochs: 3
trials: {trials}
validation: 0.2
sampler: {{name: tpe, n_startup_trials: 3}}
pruner: none
space:
  lr: {{type: float, low: 1.0e-3, high: 3.0e-2, log: true}}
  width: {{type: int, low: 16, high: 64, log: true}}
  batch_size: 64
{extra}"""

# a user's own training loop: evaluates ctx.data.val, checkpoints its weights every epoch
TRAINER = '''
import torch
import torch.nn.functional as F


def fit(params, ctx):
    torch.manual_seed(ctx.seed)
    data = ctx.data
    model = ctx.build_model(params).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
    acc = 0.0
    for epoch in range(1, ctx.max_epochs + 1):
        model.train()
        for x, y in data.batches("train", params["batch_size"], shuffle=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum())
                          for x, y in data.batches("val", 512, shuffle=False))
        acc = correct / len(data.val)
        ctx.save_checkpoint({"model": model.state_dict(), "epoch": epoch})
        ctx.report(epoch, acc)
    return acc
'''


def make_study(folder: Path, name: str, trials: int, extra: str = "") -> str:
    spec = folder / f"{name}.yaml"
    spec.write_text(STUDY.format(name=name, trials=trials, extra=extra))
    url = f"sqlite:///{folder / 'studies.db'}"
    result = runner.invoke(app, ["run", str(spec), "--storage", url, "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    return url


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_study(tmp_path_factory.mktemp("retrain"), "digits_rt", trials=4)


def retrain(url: str, name: str, *args: str) -> str:
    result = runner.invoke(app, ["retrain", name, "--storage", url, "--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_retrain_best_saves_weights_card_and_study_attr(study: str, tmp_path: Path) -> None:
    from tuner import study as st
    from tuner.storage import connect

    output = retrain(study, "digits_rt", "--out", str(tmp_path / "m"))
    handle = st.load(connect(study), "digits_rt")
    best = handle.study.best_trial
    assert f"trial {best.number} of digits_rt" in output and "tested once" in output
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["study"] == "digits_rt" and card["trial"] == best.number
    assert card["params"] == {"batch_size": 64, **best.params}  # constants included
    assert card["epochs"] == best.user_attrs["epochs_run"] == 3
    assert card["seed"] == best.user_attrs["seed"]
    assert card["data"] == "digits" and card["files"] == {"weights": "model.pt",
                                                          "card": "model.json"}
    assert card["test_samples"] == 359 and card["train_samples"] == 1438  # train+val
    assert {"torch", "optuna", "tuner"} <= set(card["versions"])
    accuracy = card["test_metrics"]["accuracy"]
    assert 0.5 < accuracy <= 1.0
    recorded = handle.study.user_attrs[f"retrain.{best.number}"]
    assert recorded["metrics"]["accuracy"] == accuracy
    assert recorded["out"] == str((tmp_path / "m").resolve())
    shown = runner.invoke(app, ["best", "digits_rt", "--storage", study])
    # validation and test side by side, on the metric's own row
    row = next(line.split() for line in shown.output.splitlines()
               if line.startswith("accuracy"))
    assert shown.exit_code == 0 and row == ["accuracy", f"{best.value:.6g}", f"{accuracy:.6g}"]
    assert "train loss (train+val, last epoch)" in shown.output
    row = next(line.split() for line in output.splitlines() if line.startswith("accuracy"))
    assert row == ["accuracy", f"{best.value:.6g}", f"{accuracy:.6g}"]
    as_json = json.loads(runner.invoke(app, ["best", "digits_rt", "--storage", study,
                                             "--json"]).output)
    assert as_json["test"]["metrics"]["accuracy"] == accuracy


def test_weights_reload_into_a_fresh_model_and_give_the_test_score(study: str,
                                                                   tmp_path: Path) -> None:
    from tuner import study as st
    from tuner.results import retrain as rt
    from tuner.storage import connect
    from tuner.training import train
    from tuner.training.assets import StudyAssets

    retrain(study, "digits_rt", "--out", str(tmp_path / "m"))
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    handle = st.load(connect(study), "digits_rt")
    assets = StudyAssets(handle.spec, device="cpu", data_dir="data")
    final = assets.data().final()
    model = assets.model_builder(final)(card["params"])
    model.load_state_dict(torch.load(tmp_path / "m" / "model.pt", weights_only=True))
    assert train.evaluate(model, final, "val")["accuracy"] == card["test_metrics"]["accuracy"]
    # the same through the library's loader
    loaded, same_card = rt.load_model(tmp_path / "m")
    assert same_card == card
    assert train.evaluate(loaded, final, "val")["accuracy"] == card["test_metrics"]["accuracy"]


def test_same_seed_same_test_accuracy(study: str, tmp_path: Path) -> None:
    retrain(study, "digits_rt", "--trial", "1", "--out", str(tmp_path / "a"), "-q")
    retrain(study, "digits_rt", "--trial", "1", "--out", str(tmp_path / "b"), "-q")
    a, b = (json.loads((tmp_path / d / "model.json").read_text()) for d in "ab")
    assert a["trial"] == b["trial"] == 1
    assert a["test_metrics"] == b["test_metrics"]
    wa, wb = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_default_folder(study: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    retrain(study, "digits_rt", "--trial", "0", "-q")
    assert (tmp_path / "runs" / "digits_rt" / "trial-0" / "model.pt").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--trial", "99"], "has no trial 99"),
    ([], "no study named"),
])
def test_bad_choices_are_one_line(study: str, tmp_path: Path, args: list[str],
                                  message: str) -> None:
    name = "nope" if not args else "digits_rt"
    result = runner.invoke(app, ["retrain", name, "--storage", study, "--device", "cpu",
                                 "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_a_trial_that_did_not_complete_is_refused(tmp_path: Path) -> None:
    from tuner import study as st
    from tuner.config import parse_spec
    from tuner.storage import connect

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = parse_spec({"name": "pr", "data": "digits",
                       "space": {"lr": {"type": "float", "low": 0.001, "high": 0.1}}})
    handle = st.create_or_resume(connect(url), spec)
    dist = {"lr": optuna.distributions.FloatDistribution(0.001, 0.1)}
    handle.study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"lr": 0.01}, distributions=dist))
    result = runner.invoke(app, ["retrain", "pr", "--storage", url, "--trial", "0"])
    assert result.exit_code == 2 and "PRUNED, not COMPLETE" in result.output
    result = runner.invoke(app, ["retrain", "pr", "--storage", url])
    assert result.exit_code == 2 and "no completed trial to retrain" in result.output


def test_a_study_without_data_needs_its_data(tmp_path: Path) -> None:
    from tuner import study as st
    from tuner.config import parse_spec
    from tuner.storage import connect

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = parse_spec({"name": "own", "trainer": "mine.py:fit", "task": "classification",
                       "space": {"lr": {"type": "float", "low": 0.001, "high": 0.1}}})
    handle = st.create_or_resume(connect(url), spec)
    dist = {"lr": optuna.distributions.FloatDistribution(0.001, 0.1)}
    handle.study.add_trial(optuna.trial.create_trial(value=0.9, params={"lr": 0.01},
                                                     distributions=dist))
    result = runner.invoke(app, ["retrain", "own", "--storage", url, "--device", "cpu",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "retrain needs the study's data" in result.output


def test_a_user_trainer_is_retrained_with_its_checkpointed_weights(tmp_path: Path) -> None:
    from tuner.data import load_builtin
    from tuner.results import retrain as rt
    from tuner.training import train

    (tmp_path / "mine.py").write_text(TRAINER)
    url = make_study(tmp_path, "own_loop", trials=2, extra="trainer: mine.py:fit\n")
    output = retrain(url, "own_loop", "--out", str(tmp_path / "m"))
    assert "saved" in output and "model.pt" in output
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["trainer"] == "mine.py:fit"
    assert not (tmp_path / "m" / ".retrain-checkpoint.pt").exists()
    model, _ = rt.load_model(tmp_path / "m")
    final = load_builtin("digits", "data", validation=0.2, seed=0).final()
    # the user's loop reported its last epoch's test accuracy: the saved weights give it
    assert train.evaluate(model, final, "val")["accuracy"] == pytest.approx(
        card["test_metrics"]["accuracy"])
