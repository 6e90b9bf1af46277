"""``model: cnn1d``: a 1-D convolutional network over time, the usual strong baseline for
time-series classification next to recurrent nets.

``depth`` blocks of Conv1d(kernel ``kernel_size``, dilation ``dilation`` ** block) ->
[BatchNorm1d] -> activation -> [Dropout], ``channels`` wide (``channels_0..`` and
``kernel_size_0..`` per block), "same" padding so every step keeps its place; then a global
``pool`` over the real (non-padded) steps and a linear head. Token ids go through an
``embedding`` first. Three blocks of 128, 256, 128 channels (``channels_0..2``) with kernels
8, 5, 3 (``kernel_size_0..2``) are the FCN of Wang et al. (2017), the standard deep baseline
of the UCR archive.

``residual: true`` makes each block a residual one, as in that paper's ResNet: two
convolutions (the second without activation) added to a shortcut (a 1x1 convolution where the
width changes), then the activation and dropout.
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
    "depth": Knob(3, "convolution blocks", low=1),
    "channels": Knob(64, "channels of each block (per_layer allowed)", low=1),
    "kernel_size": Knob(5, "kernel size over time (per_layer allowed)", low=1),
    "dilation": Knob(1, "dilation base: block i dilates by dilation**i (1: none)", low=1),
    "pool": Knob("mean", "global pooling over time", choices=("mean", "max", "last")),
    "batch_norm": Knob(True, "batch norm after each convolution"),
    "residual": Knob(False, "residual blocks: two convolutions plus a shortcut"),
    "embedding": Knob(64, "embedding dimension for token ids", low=1),
    "vocab_size": Knob(0, "token ids the embedding holds (largest id + 1; id 0 is padding)",
                       low=0),
}


def build(p: Mapping[str, Any], inputs: Inputs, num_outputs: int) -> nn.Module:
    from tuner.models._conv1d import ConvNet1d

    return ConvNet1d(p, inputs, num_outputs)


register(Family(
    name="cnn1d",
    summary="1-D convolutional network over time for sequences or token ids",
    inputs=frozenset({InputKind.sequence, InputKind.tokens}),
    knobs=KNOBS,
    build=build,
    per_layer=("channels", "kernel_size"),
))
