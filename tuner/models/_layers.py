"""PyTorch pieces the built-in families share: activations, blocks, initialisation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
# the gain nn.init gives each activation; the smooth ReLUs are close enough to ReLU
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "prelu": "leaky_relu", "elu": "relu",
              "gelu": "relu", "silu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def per_layer(p: Mapping[str, Any], name: str, i: int, default: int) -> int:
    """``name_i`` when the study draws one value per layer, else ``default``."""
    return int(p.get(f"{name}_{i}", default))


def block(p: Mapping[str, Any], layer: nn.Module, norm: nn.Module | None) -> list[nn.Module]:
    """layer -> [norm] -> activation -> [dropout]."""
    mods = [layer, *([norm] if norm is not None else []), ACTIVATIONS[p["activation"]]()]
    if float(p["dropout"]) > 0:
        mods.append(nn.Dropout(float(p["dropout"])))
    return mods


def initialise(model: nn.Module, init: str, activation: str) -> None:
    if init == "default":  # PyTorch's own (Kaiming-uniform with a=sqrt(5))
        return
    linears = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv1d)]
    for m in linears:
        # the output layer feeds no activation
        gain_name = "linear" if m is linears[-1] else _GAIN_NAME[activation]
        param = 0.25 if activation == "prelu" else 0.01 if activation == "leaky_relu" else None
        if init == "xavier":
            nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(gain_name, param))
        else:
            nn.init.kaiming_normal_(m.weight, a=param or 0, nonlinearity=gain_name)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
