"""Params -> nn.Module: every activation and init, per-layer widths, shapes, bad names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuner.kinds import InputKind, Inputs
from tuner.models import build as build_family
from tuner.models import count_parameters
from tuner.models._knobs import ACTIVATIONS as ACTIVATION_NAMES
from tuner.models._knobs import INITS
from tuner.models._layers import ACTIVATIONS


def build(family: str, params: dict, shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    kind = {1: InputKind.tabular, 2: InputKind.sequence, 3: InputKind.image}[len(shape)]
    return build_family(family, params, Inputs(kind, shape), num_outputs)


def test_activation_names_match_the_vocabulary() -> None:
    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize(("family", "shape"), [("mlp", (1, 28, 28)), ("mlp", (64,)),
                                               ("cnn", (3, 32, 32))])
def test_every_activation_and_init_builds_and_runs(family: str, shape: tuple[int, ...],
                                                   activation: str, init: str) -> None:
    params = {"activation": activation, "init": init, "depth": 2, "width": 16, "channels": 4,
              "batch_norm": True, "dropout": 0.1}
    model = build(family, params, shape, 10)
    assert any(isinstance(m, ACTIVATIONS[activation]) for m in model.modules())
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 10) and torch.isfinite(out).all()


def test_mlp_defaults_come_from_the_vocabulary() -> None:
    model = build("mlp", {}, (784,), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [256, 256, 10]
    assert not any(isinstance(m, nn.BatchNorm1d | nn.Dropout) for m in model.modules())


def test_per_layer_widths_are_honoured() -> None:
    params = {"depth": 3, "width": 99, "width_0": 7, "width_1": 5, "width_2": 3}
    model = build("mlp", params, (1, 28, 28), 4)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [7, 5, 3, 4]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 4)


def test_batch_norm_and_dropout_are_added() -> None:
    model = build("mlp", {"depth": 2, "batch_norm": True, "dropout": 0.3}, (8,), 1)
    kinds = [type(m) for m in model]
    assert kinds.count(nn.BatchNorm1d) == 2 and kinds.count(nn.Dropout) == 2
    assert model(torch.zeros(3, 8)).shape == (3, 1)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("depth", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_cnn_fits_mnist_and_cifar_shapes(shape: tuple[int, ...], depth: int,
                                         kernel_size: int) -> None:
    params = {"depth": depth, "channels": 4, "width": 8, "kernel_size": kernel_size}
    model = build("cnn", params, shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4 * 2**i for i in range(depth)]


def test_cnn_per_layer_channels() -> None:
    model = build("cnn", {"depth": 2, "channels_0": 3, "channels_1": 6}, (1, 28, 28), 10)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [3, 6]


def test_cnn_needs_images() -> None:
    with pytest.raises(ValueError, match="image inputs"):
        build("cnn", {}, (64,), 10)


@pytest.mark.parametrize(("params", "family", "word"), [
    ({"activation": "relu6"}, "mlp", "leaky_relu"),
    ({"init": "orthogonal"}, "mlp", "kaiming"),
    ({}, "perceiver", "cnn"),
])
def test_unknown_names_list_the_allowed_ones(params: dict, family: str, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        build(family, params, (4,), 2)


def test_count_parameters() -> None:
    model = build("mlp", {"depth": 1, "width": 4}, (3,), 2)
    assert count_parameters(model) == (3 * 4 + 4) + (4 * 2 + 2)


def test_inits_differ_from_the_default() -> None:
    def first_weight(init: str) -> torch.Tensor:
        torch.manual_seed(0)
        return build("mlp", {"init": init, "depth": 1, "width": 64}, (64,), 2)[1].weight

    default, xavier, kaiming = map(first_weight, INITS)
    assert not torch.equal(default, xavier) and not torch.equal(xavier, kaiming)
    # kaiming (fan_in, relu gain): std = sqrt(2 / 64)
    assert kaiming.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.1)
