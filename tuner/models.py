"""Params -> nn.Module: the built-in model families, an MLP and a small CNN.

Every knob is a name from ``vocab.BUILTIN_PARAMS`` and falls back to its default there, so a
study may tune any subset: ``depth``, ``width`` (or ``width_0..width_{depth-1}``),
``activation``, ``dropout``, ``batch_norm``, ``init``; the CNN adds ``channels`` (or
``channels_0..``) and ``kernel_size``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from tuner import vocab

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
FAMILIES = ("mlp", "cnn")


def build(family: str, params: Mapping[str, Any], input_shape: Sequence[int],
          num_outputs: int) -> nn.Module:
    """The model ``family`` ("mlp" or "cnn") configured by ``params`` for inputs of
    ``input_shape`` (one sample) and ``num_outputs`` logits (1 for regression)."""
    p = {**vocab.BUILTIN_PARAMS, **params}
    _check_choice("model", family, FAMILIES)
    _check_choice("activation", p["activation"], vocab.ACTIVATIONS)
    _check_choice("init", p["init"], vocab.INITS)
    if family == "mlp":
        model = _mlp(p, tuple(input_shape), num_outputs)
    else:
        model = _cnn(p, tuple(input_shape), num_outputs)
    _initialise(model, p["init"], p["activation"])
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in model.parameters())


def _check_choice(what: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")


def _per_layer(p: Mapping[str, Any], name: str, i: int, default: int) -> int:
    return int(p.get(f"{name}_{i}", default))


def _block(p: Mapping[str, Any], layer: nn.Module, norm: nn.Module | None) -> list[nn.Module]:
    """layer -> [norm] -> activation -> [dropout]."""
    mods = [layer, *([norm] if norm is not None else []), ACTIVATIONS[p["activation"]]()]
    if float(p["dropout"]) > 0:
        mods.append(nn.Dropout(float(p["dropout"])))
    return mods


def _mlp(p: Mapping[str, Any], input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    bn = bool(p["batch_norm"])
    fan_in = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(int(p["depth"])):
        width = _per_layer(p, "width", i, int(p["width"]))
        # a bias before batch norm is cancelled by its mean subtraction
        layers += _block(p, nn.Linear(fan_in, width, bias=not bn),
                         nn.BatchNorm1d(width) if bn else None)
        fan_in = width
    layers.append(nn.Linear(fan_in, num_outputs))
    return nn.Sequential(*layers)


def _cnn(p: Mapping[str, Any], input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """``depth`` blocks of conv -> [bn] -> act -> 2x2 max pool, channels doubling from
    ``channels``, then a hidden linear layer of ``width`` and the head."""
    if len(input_shape) != 3:
        raise ValueError(f"the cnn model needs image inputs (C, H, W); this data has samples "
                         f"shaped {input_shape}; use model: mlp")
    bn = bool(p["batch_norm"])
    kernel = int(p["kernel_size"])
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for i in range(int(p["depth"])):
        out = _per_layer(p, "channels", i, int(p["channels"]) * 2**i)
        layers += _block(p, nn.Conv2d(c, out, kernel, padding=kernel // 2, bias=not bn),
                         nn.BatchNorm2d(out) if bn else None)
        # "same" padding for odd kernels; an even kernel grows the map by one pixel
        h, w = h + 1 - kernel % 2, w + 1 - kernel % 2
        if min(h, w) >= 2:  # 28 -> 14 -> 7 -> 3 -> 1; no pooling below 2x2
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    width = int(p["width"])
    layers += [nn.Flatten(), *_block(p, nn.Linear(c * h * w, width), None),
               nn.Linear(width, num_outputs)]
    return nn.Sequential(*layers)


def _initialise(model: nn.Module, init: str, activation: str) -> None:
    if init == "default":  # PyTorch's own (Kaiming-uniform with a=sqrt(5))
        return
    linears = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
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
