"""The study file's ``fuse:`` (off, auto or K): when same-shape trials may train as one
stacked model (:mod:`tuner.training.fuse`), and the key that says which trials share a shape. The
model families that can be stacked say so in their registration (``Family(fusable=True)``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from tuner import models, schedules
from tuner.config._base import Scalar
from tuner.config.params import Fixed, example

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec

# the knobs that make two trials' stacked models differ in shape or in how they step (the
# stackable family's, but dropout, and the loop's); members may differ in everything else
FUSE_SHAPE_KNOBS = ("depth", "width", "activation", "batch_norm", "init", "batch_size",
                    "optimizer", "schedule", "epochs")
# the values of shape knobs that the fused loop supports (others: run unfused)
FUSE_SHAPE_VALUES: dict[str, tuple[Scalar, ...]] = {
    "optimizer": ("sgd", "sgd_momentum", "adam", "adamw"),
    "batch_norm": (False,),
    "activation": ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid"),
}
# knobs the fused loop does not implement, with the values it accepts when fixed
FUSE_UNSUPPORTED: dict[str, tuple[Scalar | None, ...]] = {
    "l1": (0, 0.0), "clip_norm": (None, 0, 0.0), "label_smoothing": (0, 0.0), "patience": (0,),
    "augment_crop": (0,), "augment_flip": (False,), "augment_cutout": (0,), "freeze": (0,),
    "backbone_lr_scale": (1, 1.0), "layer_lr_decay": (1, 1.0),
}


def _words(v: Any) -> Any:
    if v is False:  # YAML reads a bare off as false
        return "off"
    if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
        return int(v)
    if isinstance(v, bool) or not (isinstance(v, int) or v in ("auto", "off")):
        raise ValueError(f"give auto, off or a number of trials K (got {v!r}); e.g. fuse: 4")
    return v


# off, auto (the worker measures K = 1, 2, 4, 8 and keeps the fastest) or K members
Fuse = Annotated[Literal["auto", "off"] | Annotated[int, Field(ge=1, le=256)],
                 BeforeValidator(_words)]


def check(spec: StudySpec, fuse: str | int) -> None:
    """``fuse: K`` (K > 1) where K trials cannot share one stacked model: a ValueError
    naming why. ``auto`` and ``off`` never fail: auto fuses what it can."""
    if isinstance(fuse, int) and fuse > 1 and (why := blocker(spec, fixed_shape=True)):
        raise ValueError(f"fuse: {fuse} cannot stack these trials: {why}")


def blocker(spec: StudySpec, *, fixed_shape: bool) -> str | None:
    """Why this study's trials cannot be trained as one stacked model (None: they can);
    ``fixed_shape``: the space must fix the shape too (``fuse: K``), not only let it
    repeat (``fuse: auto`` groups the trials that happen to share one)."""
    if spec.trainer is not None:
        return "the study brings its own trainer; fusion runs tuner's own loop (use fuse: off)"
    if spec.model not in (stackable := models.fusable()):
        return (f"model: {spec.model}; fusion stacks the {' and '.join(stackable)} family only "
                "(use fuse: off)")
    if spec.kfold:
        return "k-fold validation trains folds one by one; use a validation fraction"
    if why := schedules.of(spec).fuse_blocker():
        return why
    if spec.multi_objective:
        return "several objectives; fusion judges one learning curve per member"
    if spec.compile:
        return "compile: true; the stacked model is not compiled (set compile: false)"
    for name, p in spec.space.items():
        base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        if base in FUSE_UNSUPPORTED:
            if not isinstance(p, Fixed) or p.value not in FUSE_UNSUPPORTED[base]:
                return (f"space.{name} is not supported by the fused loop; leave it out, "
                        "or use fuse: off")
        elif base in FUSE_SHAPE_KNOBS or (base == "width" and name != "width"):
            if not isinstance(p, Fixed):
                if fixed_shape:
                    return (f"space.{name} varies, and it sets the model's shape; fix it "
                            f"(e.g. {name}: {example(p)}) or use fuse: auto")
                continue
            allowed = FUSE_SHAPE_VALUES.get(base)
            if allowed is not None and p.value not in allowed:
                return (f"space.{name}: {p.value} is not supported by the fused loop; use "
                        f"one of {', '.join(map(str, allowed))} or fuse: off")
    return None


def fuse_key(params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The shape of a trial's stacked model: trials with one key may be fused. None when
    these params cannot be fused at all (an optimizer or activation the fused loop lacks,
    or a knob it does not implement)."""
    for base, allowed in FUSE_UNSUPPORTED.items():
        if base in params and params[base] not in allowed:
            return None
    for base, allowed in FUSE_SHAPE_VALUES.items():
        if base in params and params[base] not in allowed:
            return None
    shaped = [k for k in params if k in FUSE_SHAPE_KNOBS or
              (k.startswith("width_") and k[6:].isdigit())]
    return tuple(sorted((k, params[k]) for k in shaped))
