"""Training recipes: on-device augmentation, clipping, warm-up, early stopping inside a trial."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tuner.data import DataBundle, load_builtin
from tuner.errors import DataError
from tuner.kinds import InputKind
from tuner.models import build
from tuner.training.context import Context
from tuner.training.recipes import EarlyStopping, Recipe, cutout, random_crop, random_flip
from tuner.training.train import _setup, fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> DataBundle:
    return load_builtin("mnist", mnist_dir, validation=0.2, seed=0, download=False)


def _ctx(data: DataBundle, epochs: int, family: str = "mlp") -> Context:
    return Context(device=CPU, seed=0, max_epochs=epochs, data=data,
                   build_model=lambda p: build(family, p, data.inputs, data.num_outputs))


def test_random_crop_is_a_shifted_window_of_the_padded_image() -> None:
    x = torch.randn(16, 3, 8, 8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(16):  # each output matches exactly one of the 25 windows
        windows = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert windows, i
    assert not torch.equal(out, x)


def test_flip_and_cutout() -> None:
    x = torch.randn(64, 1, 6, 6) + 10  # no zeros in the input
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], x[i]) for i in range(64)]
    assert all(same[i] or torch.equal(flipped[i], x[i].flip(2)) for i in range(64))
    assert 10 < sum(same) < 54
    holes = (cutout(x, 3, torch.Generator().manual_seed(0)) == 0).sum(dim=(1, 2, 3))
    assert bool((holes >= 4).all()) and bool((holes <= 9).all())  # edges clip the square


def test_augmented_training_learns_and_non_images_are_refused(mnist: DataBundle) -> None:
    ctx = _ctx(mnist, 4, "cnn")
    value = fit({"lr": 3e-3, "augment_crop": 2, "augment_flip": True, "augment_cutout": 4,
                 "channels": 8, "depth": 2, "width": 32}, ctx)
    assert value > 0.5, ctx.history
    model = torch.nn.Linear(2, 2)
    with pytest.raises(DataError, match="augmentation works on images only"):
        Recipe.from_params({"label_smoothing": 0, "warmup_epochs": 0, "patience": 0,
                            "augment_crop": 0, "augment_flip": True, "augment_cutout": 0},
                           model, InputKind.sequence)


def test_rnn_clips_by_default_and_warmup_ramps_the_rate(mnist: DataBundle) -> None:
    from tuner.data._bundle import images_as_sequences

    seq = images_as_sequences(mnist)
    run = _setup({"lr": 0.01, "warmup_epochs": 3, "schedule": "cosine"}, _ctx(seq, 6, "rnn"),
                 seq)
    assert run.recipe.clip_norm == 1.0
    lrs = []
    for _ in range(6):
        lrs.append(run.opt.param_groups[0]["lr"])
        run.opt.step()
        run.sched.step()
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert lrs[4] < 0.01 and lrs[5] < lrs[4]  # then the cosine
    off = _setup({"clip_norm": 0}, _ctx(seq, 1, "rnn"), seq)
    assert off.recipe.clip_norm == 0 and _setup({}, _ctx(mnist, 1), mnist).recipe.clip_norm == 0


def test_patience_stops_the_trial_and_keeps_its_best_epoch(mnist: DataBundle) -> None:
    ctx = _ctx(mnist, 40)
    # a rate too high for adam: the metric soon stops improving
    value = fit({"lr": 0.05, "patience": 2, "width": 32}, ctx)
    values = [h["value"] for h in ctx.history]
    assert value == max(values)
    assert ctx.info["stopped_early_at"] < 40 and len(values) == ctx.info["stopped_early_at"]
    assert ctx.info["stopped_early_at"] - ctx.info["best_epoch"] == 2


def test_early_stopping_replays_a_resumed_history() -> None:
    s = EarlyStopping(2, "minimize")
    s.replay([{"epoch": 1, "value": 0.5}, {"epoch": 2, "value": 0.4}, {"epoch": 3, "value": 0.6}])
    assert (s.best, s.best_epoch, s.stop) == (0.4, 2, False)
    s.update(4, 0.45)
    assert s.stop
