"""``model: rnn``: a recurrent network (RNN, LSTM or GRU) over sequences or token ids.

An optional input projection (``proj`` units, Linear -> activation) or, for token ids, an
embedding of ``embedding`` dimensions (id 0 is padding); then ``depth`` stacked layers of
``width`` hidden units (``width_0..`` per layer), optionally ``bidirectional``, with
``dropout`` between layers; the outputs are pooled over time (``pool``: the ``last`` real
step, or the ``mean`` / ``max`` over real steps) and a linear head reads them.

Padded steps: sequences of unequal length come padded at the end, with zeros after
normalisation (float sequences) or id 0 (tokens); a sample's length is its last non-zero
step. Pooling skips padded steps, and a bidirectional layer reads packed sequences so its
backward direction starts at each sample's last real step.

``init: orthogonal`` draws orthogonal recurrent matrices and Xavier input matrices, with an
LSTM's forget-gate bias at 1 (Jozefowicz et al., 2015). Gradient clipping is on by default
for this family (``clip_norm`` 1.0 unless the study says otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.kinds import InputKind, Inputs
from tuner.models import Family, register
from tuner.models._knobs import ACTIVATIONS
from tuner.registry import Knob

if TYPE_CHECKING:
    from torch import nn

CELLS = ("rnn", "lstm", "gru")
POOLS = ("last", "mean", "max")

KNOBS = {
    "cell": Knob("lstm", "recurrent cell", choices=CELLS),
    "depth": Knob(1, "stacked recurrent layers", low=1),
    "width": Knob(128, "hidden units per layer and direction (per_layer allowed)", low=1),
    "bidirectional": Knob(False, "read each sequence both ways"),
    "dropout": Knob(0.0, "dropout between layers and before the head", low=0, high=1,
                    high_open=True),
    "pool": Knob("last", "how the outputs over time become one vector", choices=POOLS),
    "proj": Knob(0, "units of a Linear -> activation on each step before the cells (0: none)",
                 low=0),
    "embedding": Knob(64, "embedding dimension for token ids", low=1),
    "vocab_size": Knob(0, "token ids the embedding holds (0: the largest id in the data + 1)",
                       low=0),
    "activation": Knob("tanh", "activation of the input projection", choices=ACTIVATIONS),
    "init": Knob("orthogonal", "weight initialisation; orthogonal: orthogonal recurrent "
                 "weights, LSTM forget-gate bias 1", choices=("default", "orthogonal")),
}


def build(p: Mapping[str, Any], inputs: Inputs, num_outputs: int) -> nn.Module:
    from tuner.models._recurrent import RecurrentNet

    return RecurrentNet(p, inputs, num_outputs)


register(Family(
    name="rnn",
    summary="recurrent network (rnn, lstm, gru) over sequences or token ids",
    inputs=frozenset({InputKind.sequence, InputKind.tokens}),
    knobs=KNOBS,
    build=build,
    per_layer=("width",),
))
