"""tuner's training loop: it computes what a plain loop computes, learns, resumes, prunes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tuner import vocab
from tuner.data import DataBundle, load_builtin
from tuner.models import build
from tuner.training.context import CheckpointStore, Context, StopRequested, TrialPruned
from tuner.training.train import evaluate, fit, fit_final

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> DataBundle:
    return load_builtin("mnist", mnist_dir, validation=0.1, seed=0, download=False)


@pytest.fixture(scope="module")
def diabetes() -> DataBundle:
    return load_builtin("diabetes", "unused", validation=0.2, seed=0)


def _ctx(data: DataBundle, max_epochs: int, **kw: object) -> Context:
    metric = vocab.DEFAULT_METRIC[data.task]
    return Context(device=CPU, seed=kw.pop("seed", 3), max_epochs=max_epochs, task=data.task,
                   metric=kw.pop("metric", metric), data=data, **kw)


def _reference_losses(params: dict, data: DataBundle, seed: int, epochs: int) -> list[float]:
    """The textbook loop: float inputs, an index per batch, .item() per batch."""
    torch.manual_seed(seed)
    model = build("mlp", params, data.inputs, data.num_outputs)
    opt = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])
    x = (data.train.x.float() / 255 - data.mean) / data.std
    y = data.train.y
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), params["batch_size"]):
            idx = perm[i:i + params["batch_size"]]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    return losses


def test_fast_path_matches_a_plain_reference_loop(mnist: DataBundle) -> None:
    params = {"optimizer": "sgd_momentum", "lr": 0.05, "momentum": 0.9, "batch_size": 64,
              "depth": 2, "width": 32, "dropout": 0.2}
    ctx = _ctx(mnist, 3)
    fit(params, ctx)
    ours = [h["train_loss"] for h in ctx.history]
    ref = _reference_losses(params, mnist, seed=3, epochs=3)
    assert ours == pytest.approx(ref, rel=1e-4)
    assert ours[-1] < ours[0]


def test_learns_tiny_mnist(mnist: DataBundle) -> None:
    ctx = _ctx(mnist, 4)
    acc = fit({"lr": 3e-3, "width": 64, "batch_size": 32}, ctx)
    assert acc > 0.6  # chance is 0.1
    assert [h["epoch"] for h in ctx.history] == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "lr"} <= set(ctx.history[-1])
    assert ctx.info["epochs_run"] == 4 and ctx.info["param_count"] > 50_000
    assert acc == ctx.history[-1]["value"]


def test_epochs_param_is_capped_by_max_epochs(mnist: DataBundle) -> None:
    ctx = _ctx(mnist, 3)
    fit({"epochs": 2, "width": 8}, ctx)
    assert len(ctx.history) == 2
    ctx = _ctx(mnist, 2)
    fit({"epochs": 9, "width": 8}, ctx)
    assert len(ctx.history) == 2


class _StopAfter:
    """A reporter that asks the worker to stop after ``epoch``: a killed trial."""

    def __init__(self, epoch: int):
        self.epoch, self.seen = epoch, 0

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        self.seen = epoch
        return False

    def stop_requested(self) -> bool:
        return self.seen >= self.epoch


RESUME_PARAMS = {"lr": 3e-3, "width": 32, "dropout": 0.3, "batch_norm": True,
                 "optimizer": "adamw", "weight_decay": 0.01, "batch_size": 50}


def _final_weights(path: Path) -> dict[str, torch.Tensor]:
    return CheckpointStore(path).load()["model"]


def test_resume_from_a_two_epoch_checkpoint_matches_an_uninterrupted_run(
        mnist: DataBundle, tmp_path: Path) -> None:
    whole = _ctx(mnist, 4, checkpoints=CheckpointStore(tmp_path / "whole.pt"))
    expected = fit(RESUME_PARAMS, whole)

    store = CheckpointStore(tmp_path / "trial.pt")
    fit(RESUME_PARAMS, _ctx(mnist, 2, checkpoints=store))
    assert store.load()["epoch"] == 2
    resumed = _ctx(mnist, 4, checkpoints=store)
    value = fit(RESUME_PARAMS, resumed)

    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]  # the curve continues
    assert value == expected
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    a, b = _final_weights(tmp_path / "whole.pt"), _final_weights(tmp_path / "trial.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stopped_trial_resumes_with_its_schedule(mnist: DataBundle, tmp_path: Path) -> None:
    params = {**RESUME_PARAMS, "schedule": "cosine"}
    expected = fit(params, _ctx(mnist, 4))
    store = CheckpointStore(tmp_path / "trial.pt")
    with pytest.raises(StopRequested):
        fit(params, _ctx(mnist, 4, checkpoints=store, reporter=_StopAfter(2)))
    resumed = _ctx(mnist, 4, checkpoints=store)
    assert fit(params, resumed) == expected
    lrs = [h["lr"] for h in resumed.history]
    assert lrs == pytest.approx([3e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


def test_resume_after_the_last_checkpoint_reports_once_more(mnist: DataBundle,
                                                           tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "trial.pt")
    expected = fit({"width": 8}, _ctx(mnist, 2, checkpoints=store))
    again = _ctx(mnist, 2, checkpoints=store)
    assert fit({"width": 8}, again) == expected
    assert [h["epoch"] for h in again.history] == [1, 2]


class _PruneAt:
    def __init__(self, epoch: int):
        self.epoch = epoch

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        return epoch >= self.epoch

    def stop_requested(self) -> bool:
        return False


def test_a_pruning_reporter_stops_the_trial(mnist: DataBundle) -> None:
    ctx = _ctx(mnist, 5, reporter=_PruneAt(2))
    with pytest.raises(TrialPruned):
        fit({"width": 8}, ctx)
    assert len(ctx.history) == 2


def test_divergence_ends_in_a_pruned_trial_not_a_crash(mnist: DataBundle) -> None:
    ctx = _ctx(mnist, 3)
    with pytest.raises(TrialPruned):
        fit({"optimizer": "sgd", "lr": 1e12, "width": 16}, ctx)
    assert not math.isfinite(ctx.history[-1]["value"])


def test_regression_on_diabetes(diabetes: DataBundle) -> None:
    ctx = _ctx(diabetes, 20)
    mse = fit({"lr": 1e-2, "width": 32, "batch_size": 32}, ctx)
    last = ctx.history[-1]
    assert math.isfinite(mse) and mse == last["value"]
    assert last["val_r2"] > 0.2 and math.isfinite(last["val_mae"])
    # in original units: the variance of diabetes progression is ~6000, its scale ~80
    assert 1000 < mse < 6000 and 20 < last["val_mae"] < 80


def test_regression_metrics_are_in_original_units(diabetes: DataBundle) -> None:
    """A model that predicts the training mean (0 on the scaled targets)."""
    def zero(x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), 1)

    m = evaluate(zero, diabetes, "val")
    err = diabetes.val.y.double() - diabetes.y_mean
    assert m["mse"] == pytest.approx(err.square().mean().item())
    assert m["mae"] == pytest.approx(err.abs().mean().item())
    y = diabetes.val.y.double()
    # targets are scaled in float32: agreement to ~1e-7 of the variance
    assert m["r2"] == pytest.approx(1 - err.square().sum().item()
                                    / (y - y.mean()).square().sum().item(), abs=1e-6)
    assert m["loss"] == pytest.approx(m["mse"] / diabetes.y_std**2)


@pytest.mark.parametrize("optimizer", vocab.OPTIMIZERS)
@pytest.mark.parametrize("schedule", vocab.SCHEDULES)
def test_every_optimizer_and_schedule_trains(optimizer: str, schedule: str) -> None:
    data = load_builtin("moons", "unused", validation=0.1, seed=0)
    ctx = _ctx(data, 3)
    params = {"optimizer": optimizer, "schedule": schedule, "lr": 0.05, "width": 16,
              "step_size": 1, "gamma": 0.5, "batch_size": 256}
    assert fit(params, ctx) > 0.7
    lrs = [h["lr"] for h in ctx.history]
    if schedule in ("step", "exponential"):
        assert lrs == pytest.approx([0.05, 0.025, 0.0125])
    elif schedule == "constant":
        assert lrs == [0.05] * 3


def test_l1_shrinks_the_weights(mnist: DataBundle) -> None:
    def l1_norm(l1: float) -> float:
        model, _ = fit_final({"l1": l1, "width": 16, "lr": 1e-2}, _ctx(mnist, 2))
        return sum(p.abs().sum().item() for p in model.parameters() if p.dim() > 1)

    assert l1_norm(1e-3) < 0.8 * l1_norm(0.0)


def test_fit_final_trains_on_train_and_val_and_tests_once(mnist: DataBundle) -> None:
    ctx = _ctx(mnist.final(), 3)
    model, metrics = fit_final({"lr": 3e-3, "width": 64}, ctx)
    assert set(metrics) == {"accuracy", "loss", "train_loss"}
    assert metrics["accuracy"] > 0.5 and ctx.history == []
    assert ctx.info["epochs_run"] == 3
    x, _ = next(mnist.batches("test", 200, shuffle=False))
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == mnist.test.y).float().mean().item()
    assert acc == pytest.approx(metrics["accuracy"])


def test_a_metric_of_the_other_task_is_refused(mnist: DataBundle) -> None:
    with pytest.raises(ValueError, match="not a classification metric"):
        fit({}, _ctx(mnist, 1, metric="r2"))


def test_a_user_model_builder_is_used(mnist: DataBundle) -> None:
    built = []

    def builder(params: Mapping) -> torch.nn.Module:
        built.append(dict(params))
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    ctx = _ctx(mnist, 1, build_model=builder)
    assert fit({"lr": 1e-2}, ctx) > 0.2
    assert built == [{"lr": 1e-2}] and ctx.info["param_count"] == 7850
