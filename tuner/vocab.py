"""Names a study file may use. Plain data, no torch: the spec validates against these
and ``models``/``train``/``data`` map them to PyTorch (tests check both sides agree)."""

from __future__ import annotations

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "gelu", "silu", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad")
INITS = ("default", "xavier", "kaiming")
SCHEDULES = ("constant", "cosine", "step", "exponential")
MODELS = ("mlp", "cnn")

# dataset name -> task
DATASETS = {
    "mnist": "classification",
    "fashion_mnist": "classification",
    "cifar10": "classification",
    "digits": "classification",
    "moons": "classification",
    "diabetes": "regression",
}

# metric -> (task, direction)
METRICS = {
    "accuracy": ("classification", "maximize"),
    "loss": (None, "minimize"),
    "mse": ("regression", "minimize"),
    "mae": ("regression", "minimize"),
    "r2": ("regression", "maximize"),
}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "mse"}

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "qmc")
PRUNERS = ("median", "successive_halving", "hyperband", "none")

# hyperparameters that tuner's own model and training loop understand, with their defaults
BUILTIN_PARAMS = {
    "lr": 1e-3,
    "batch_size": 128,
    "epochs": None,  # defaults to the study's max epochs
    "depth": 2,
    "width": 256,
    "activation": "relu",
    "dropout": 0.0,
    "batch_norm": False,
    "init": "default",
    "optimizer": "adam",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "l1": 0.0,
    "schedule": "constant",
    "step_size": 3,
    "gamma": 0.5,
    "channels": 32,
    "kernel_size": 3,
}
CHOICE_PARAMS = {
    "activation": ACTIVATIONS,
    "optimizer": OPTIMIZERS,
    "init": INITS,
    "schedule": SCHEDULES,
}
