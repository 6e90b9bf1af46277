"""``model: mlp``: a multilayer perceptron over the flattened sample, for any input kind but
token ids.

Knobs: ``depth`` hidden layers of ``width`` units (or ``width_0..width_{depth-1}``), each
Linear -> [BatchNorm1d] -> activation -> [Dropout], then a linear head; ``init``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.kinds import InputKind, Inputs
from tuner.models import Family, register
from tuner.models._knobs import LAYER_KNOBS

if TYPE_CHECKING:
    from torch import nn


def build(p: Mapping[str, Any], inputs: Inputs, num_outputs: int) -> nn.Module:
    from torch import nn

    from tuner.models._layers import block, initialise, per_layer

    bn = bool(p["batch_norm"])
    fan_in = math.prod(inputs.shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(int(p["depth"])):
        width = per_layer(p, "width", i, int(p["width"]))
        # a bias before batch norm is cancelled by its mean subtraction
        layers += block(p, nn.Linear(fan_in, width, bias=not bn),
                        nn.BatchNorm1d(width) if bn else None)
        fan_in = width
    layers.append(nn.Linear(fan_in, num_outputs))
    model = nn.Sequential(*layers)
    initialise(model, p["init"], p["activation"])
    return model


register(Family(
    name="mlp",
    summary="multilayer perceptron over the flattened sample",
    inputs=frozenset({InputKind.image, InputKind.tabular, InputKind.sequence}),
    knobs=LAYER_KNOBS,
    build=build,
    per_layer=("width",),
    default=True,
    fusable=True,
))
