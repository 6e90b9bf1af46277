"""Model families: params -> ``nn.Module``, one module per family, each registering itself.

    from tuner import models
    models.names()                                   # ("cnn", "mlp", ...)
    models.build("mlp", params, Inputs(InputKind.tabular, (64,)), num_outputs=10)

A family module (``tuner/models/NAME.py``) calls :func:`register` with a :class:`Family`:
its name, the input kinds it accepts, the hyperparameters it understands (``Knob`` s, which
spec validation and ``tuner check`` read) and its builder. Nothing else lists families.
Importing this package does not import torch; building a model does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.kinds import InputKind, Inputs
from tuner.registry import Knob, Registry, discover

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Family", "Inputs", "InputKind", "build", "count_parameters", "default_name",
           "family_of", "fusable", "get", "names", "pretrained_folder", "pretrained_path",
           "register", "resolved", "FAMILIES", "HF_PREFIX"]


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    inputs: frozenset[InputKind]
    knobs: Mapping[str, Knob]
    build: Callable[[Mapping[str, Any], Inputs, int], nn.Module]
    # knobs a study may also give per layer (``width_0 .. width_{depth-1}``)
    per_layer: tuple[str, ...] = field(default=())
    # rules between knobs: knob -> every value the space can draw (None: a range too wide to
    # list; absent: the knob's default) -> why the space is invalid, or None
    check_space: Callable[[Mapping[str, Sequence[Any] | None]], str | None] | None = None
    # the family a study uses when it names none (one family says so)
    default: bool = False
    # K same-shape members may train as one stacked model (``fuse:``, tuner.training.fuse)
    fusable: bool = False


FAMILIES: Registry[Family] = Registry("model")


def register(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


def get(name: str) -> Family:
    return FAMILIES.get(name)


def names() -> tuple[str, ...]:
    return FAMILIES.names()


def default_name() -> str:
    """The family a study uses when it names none."""
    return next(f.name for f in FAMILIES if f.default)


def fusable() -> tuple[str, ...]:
    """The families whose members ``fuse:`` may stack into one model."""
    return tuple(f.name for f in FAMILIES if f.fusable)


# ``model: hf:PATH``: the hf family, with the pretrained model's folder (tuner.models.hf)
HF_PREFIX = "hf:"


def family_of(model: str | None) -> str | None:
    """The built-in family a study's ``model:`` names (``hf:PATH`` is the hf family), or None
    for a user's builder."""
    if model is None:
        return None
    if model.startswith(HF_PREFIX):
        return "hf"
    return model if model in FAMILIES else None


def pretrained_path(model: str | None) -> str | None:
    """The folder a pretrained ``model: hf:PATH`` names, as written (None: a family built
    from scratch, or a user's builder)."""
    return model.removeprefix(HF_PREFIX) if family_of(model) == "hf" and model else None


def pretrained_folder(path: str, base_dir: str | None) -> Path:
    """The pretrained model's folder, ``path`` relative to ``base_dir``; ValueError names
    what it lacks (the folder, its config, weights or tokenizer)."""
    from tuner.models import hf

    return hf.resolve(path, base_dir)


def resolved(model: str, base_dir: str | None) -> str:
    """``model:`` as :func:`build` takes it: a pretrained family's folder resolved against
    ``base_dir`` (``hf:PATH`` -> ``hf:/abs/folder``), any other model unchanged. ValueError
    names what the folder lacks."""
    path = pretrained_path(model)
    return model if path is None else HF_PREFIX + str(pretrained_folder(path, base_dir))


def build(family: str, params: Mapping[str, Any], inputs: Inputs,
          num_outputs: int) -> nn.Module:
    """The model ``family`` configured by ``params`` (missing knobs take their defaults) for
    samples described by ``inputs`` and ``num_outputs`` logits (1 for regression).
    ``hf:FOLDER`` builds the hf family from that (resolved) folder."""
    if family.startswith(HF_PREFIX):
        params = {**params, "path": family.removeprefix(HF_PREFIX)}
        family = "hf"
    try:
        fam = get(family)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if inputs.kind not in fam.inputs:
        kinds = ", ".join(sorted(fam.inputs))
        raise ValueError(f"the {family} model needs {kinds} inputs; this data is {inputs.kind} "
                         f"shaped {inputs.shape}; pick a model for {inputs.kind} data")
    p = {**{k: v.default for k, v in fam.knobs.items()}, **params}
    for name, knob in fam.knobs.items():
        if knob.choices is not None and (why := knob.problem(name, p[name])) is not None:
            raise ValueError(why)
    return fam.build(p, inputs, num_outputs)


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in model.parameters())


discover(__name__, __path__)
