"""Knobs shared by the built-in families (torch-free: spec validation reads them)."""

from __future__ import annotations

from tuner.registry import Knob

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "gelu", "silu", "tanh", "sigmoid")
INITS = ("default", "xavier", "kaiming")

LAYER_KNOBS: dict[str, Knob] = {
    "depth": Knob(2, "hidden layers (blocks for the cnn)", low=0),
    "width": Knob(256, "units per hidden layer (per_layer allowed)", low=1),
    "activation": Knob("relu", "activation after each hidden layer", choices=ACTIVATIONS),
    "dropout": Knob(0.0, "dropout probability after each hidden layer", low=0, high=1,
                    high_open=True),
    "batch_norm": Knob(False, "batch norm after each hidden layer"),
    "init": Knob("default", "weight initialisation", choices=INITS),
}
