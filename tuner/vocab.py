"""Names a study file may use for tuner's own training loop: tasks, metrics, optimizers,
schedules and the loop's hyperparameters. Plain data, no torch: the spec validates against
these and :mod:`tuner.training.train` maps them to PyTorch. Model families and datasets keep their
own names in their registries (:mod:`tuner.models`, :mod:`tuner.data`)."""

from __future__ import annotations

from tuner.registry import Knob

TASKS = ("classification", "regression")

# metric -> (task it belongs to, or None for both; direction)
METRICS = {
    "accuracy": ("classification", "maximize"),
    "loss": (None, "minimize"),
    "mse": ("regression", "minimize"),
    "mae": ("regression", "minimize"),
    "r2": ("regression", "maximize"),
}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "mse"}

# metrics tuner measures on every trial's model besides the validation metric, for
# ``objectives:`` and ``constraints:`` (all minimized). params and size_mb are known before
# training (a constraint on them rejects a config before any epoch); latency_ms (inference
# of one batch, median after warm-up, on the worker's device) and epoch_s after training.
SECONDARY_METRICS = {
    "params": "parameter count",
    "size_mb": "size of the parameters and buffers in MB",
    "latency_ms": "inference latency of one batch in ms",
    "epoch_s": "training seconds per epoch",
}
BEFORE_TRAINING = ("params", "size_mb")


def task_metrics(task: str) -> tuple[str, ...]:
    """The metrics tuner's loop computes for ``task``."""
    return tuple(m for m, (t, _) in METRICS.items() if t in (None, task))


OPTIMIZERS = ("sgd", "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("constant", "cosine", "step", "exponential")

# the hyperparameters tuner's own training loop understands, with defaults and valid values
TRAINING_KNOBS: dict[str, Knob] = {
    "lr": Knob(1e-3, "learning rate", low=0, low_open=True),
    "batch_size": Knob(128, "samples per optimizer step", low=1),
    "epochs": Knob(None, "epochs of this trial [default: the study's epochs]", low=1,
                   integer=True),
    "optimizer": Knob("adam", "optimizer", choices=OPTIMIZERS),
    "momentum": Knob(0.9, "momentum of sgd_momentum", low=0, high=1),
    "weight_decay": Knob(0.0, "L2 penalty (decoupled for adamw)", low=0),
    "l1": Knob(0.0, "L1 penalty on weight matrices and kernels", low=0),
    "schedule": Knob("constant", "learning-rate schedule, stepped per epoch", choices=SCHEDULES),
    "step_size": Knob(3, "epochs between decays of the step schedule", low=1),
    "gamma": Knob(0.5, "decay factor of the step and exponential schedules", low=0, low_open=True),
    # training recipes (tuner/training/recipes.py)
    "clip_norm": Knob(None, "clip the gradients' global L2 norm to this (0: off) [default: off, "
                      "1.0 for the rnn family]", low=0),
    "label_smoothing": Knob(0.0, "label smoothing of the classification loss", low=0, high=1,
                            high_open=True),
    "warmup_epochs": Knob(0, "epochs of linear learning-rate warm-up before the schedule", low=0),
    "patience": Knob(0, "stop a trial after this many epochs without a better validation "
                     "metric and keep its best epoch's value (0: off)", low=0),
    "augment_crop": Knob(0, "random crop after padding each side by this many pixels (images)",
                         low=0),
    "augment_flip": Knob(False, "random horizontal flip (images)"),
    "augment_cutout": Knob(0, "zero a random square of this side in pixels (images)", low=0),
    # transfer learning (tuner/training/transfer.py)
    "weights": Knob(None, "state_dict to start the model from, relative to the study file "
                    "[default: the study's weights:]"),
    "freeze": Knob(0, "leading blocks of the model that stay frozen (never the head)", low=0),
    "backbone_lr_scale": Knob(1.0, "learning-rate multiplier for every block but the head",
                              low=0, low_open=True),
    "layer_lr_decay": Knob(1.0, "layer-wise learning-rate decay: each block further below the "
                           "head learns this much slower (1: off)", low=0, low_open=True, high=1),
}
# knobs that only make sense on image data: refused on any other kind
IMAGE_ONLY_KNOBS = ("augment_crop", "augment_flip", "augment_cutout")


def defaults(knobs: dict[str, Knob]) -> dict[str, object]:
    return {k: v.default for k, v in knobs.items()}
