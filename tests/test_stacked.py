"""tuner.training.stacked: K members' layers as one stacked model, and the optimizer that steps each
member's slice with its own hyperparameters."""

from __future__ import annotations

import pytest
import torch

from tuner.kinds import InputKind, Inputs
from tuner.models import build
from tuner.training.stacked import StackedMLP, StackedOptimizer


def test_stacked_optimizer_leaves_members_alone() -> None:
    """Each slice steps with its own lr: a zero-lr member does not move."""
    w = torch.randn(3, 4, 5, requires_grad=True)
    opt = StackedOptimizer("adam", [w], lr=torch.tensor([0.1, 0.0, 0.01]),
                           weight_decay=torch.zeros(3), momentum=torch.zeros(3))
    before = w.detach().clone()
    (w ** 2).sum().backward()
    opt.step()
    assert torch.equal(w[1], before[1]) and not torch.equal(w[0], before[0])
    assert (w[0] - before[0]).abs().max() > (w[2] - before[2]).abs().max()


def test_shapes_that_differ_are_refused() -> None:
    a = build("mlp", {"depth": 1, "width": 8, "activation": "relu", "dropout": 0.0,
                      "batch_norm": False, "init": "default"}, Inputs(InputKind.tabular, (4,)), 3)
    b = build("mlp", {"depth": 1, "width": 9, "activation": "relu", "dropout": 0.0,
                      "batch_norm": False, "init": "default"}, Inputs(InputKind.tabular, (4,)), 3)
    with pytest.raises(ValueError, match="one shape"):
        StackedMLP([a, b])
