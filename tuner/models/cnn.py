"""``model: cnn``: a small convolutional network for images.

``depth`` blocks of Conv2d -> [BatchNorm2d] -> activation -> 2x2 max pool, channels doubling
from ``channels`` (or ``channels_0..``), kernel ``kernel_size``; then a hidden linear layer
of ``width`` and the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.kinds import InputKind, Inputs
from tuner.models import Family, register
from tuner.models._knobs import LAYER_KNOBS
from tuner.registry import Knob

if TYPE_CHECKING:
    from torch import nn

KNOBS = {
    **LAYER_KNOBS,
    "channels": Knob(32, "channels of the first conv block, doubling per block (per_layer allowed)",
                     low=1),
    "kernel_size": Knob(3, "conv kernel size", low=1),
}


def build(p: Mapping[str, Any], inputs: Inputs, num_outputs: int) -> nn.Module:
    from torch import nn

    from tuner.models._layers import block, initialise, per_layer

    bn = bool(p["batch_norm"])
    kernel = int(p["kernel_size"])
    c, h, w = inputs.shape
    layers: list[nn.Module] = []
    for i in range(int(p["depth"])):
        out = per_layer(p, "channels", i, int(p["channels"]) * 2**i)
        layers += block(p, nn.Conv2d(c, out, kernel, padding=kernel // 2, bias=not bn),
                        nn.BatchNorm2d(out) if bn else None)
        # "same" padding for odd kernels; an even kernel grows the map by one pixel
        h, w = h + 1 - kernel % 2, w + 1 - kernel % 2
        if min(h, w) >= 2:  # 28 -> 14 -> 7 -> 3 -> 1; no pooling below 2x2
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    width = int(p["width"])
    layers += [nn.Flatten(), *block(p, nn.Linear(c * h * w, width), None),
               nn.Linear(width, num_outputs)]
    model = nn.Sequential(*layers)
    initialise(model, p["init"], p["activation"])
    model.channels_last = True  # NHWC on CUDA (tensor-core convs): safe, it flattens by Flatten
    return model


register(Family(
    name="cnn",
    summary="small convolutional network for images",
    inputs=frozenset({InputKind.image}),
    knobs=KNOBS,
    build=build,
    per_layer=("channels",),
))
