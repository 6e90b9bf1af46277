"""A user's own data loader (``data: file.py:load``): whatever it returned -> a bundle.

The loader returns ``(train, val[, test])`` or a dict of those, each an ``(X, y)`` pair of
tensors or numpy arrays or a torch Dataset. The kind of sample is the study's
``data: {as: KIND}`` when given, else read off X without ambiguity: 4-D is images
(N,C,H,W); 3-D uint8 is greyscale images (N,H,W); 3-D float is sequences (N,T,F); 2-D is
tabular (N,F). Token ids (N,T) must be stated (``as: tokens``). The task, unless the study
names it (or its metric implies it), follows the labels' dtype: integers classify, floats
regress.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tuner.data._bundle import SPLITS, DataBundle, Split, carve, make_bundle, reason
from tuner.errors import DataError
from tuner.kinds import InputKind

_EXPECTED = ("expected (train, val), (train, val, test) or a dict with keys train/val/test, "
             "each an (X, y) pair of tensors or numpy arrays, or a torch Dataset "
             "(without val, one is carved from train)")


def from_user(result: Any, task: str | None, *, validation: float, seed: int, name: str,
              kind: InputKind | None = None) -> DataBundle:
    """What a user's ``data:`` loader returned -> a bundle on the CPU. A missing ``val`` is
    carved out of ``train`` (``validation`` fraction, seeded). ``task`` and ``kind`` None:
    inferred (see the module docstring)."""
    if task not in (None, "classification", "regression"):
        raise ValueError(f"task must be classification or regression (got {task!r})")
    raw = {k: _arrays(part, f"{name}: {k}") if part is not None or k == "train" else None
           for k, part in _user_parts(result, name).items()}
    x0, y0 = raw["train"]
    if task is None:
        task = "regression" if y0.is_floating_point() else "classification"
    kind = kind or _infer_kind(x0, name)
    splits = {k: None if part is None else _user_split(*part, task, kind, f"{name}: {k}")
              for k, part in raw.items()}
    train, val, test = splits["train"], splits.get("val"), splits.get("test")
    if val is None:
        train, val = carve(train, validation, seed)
    for label, s in (("val", val), ("test", test)):
        if s is not None and s.base_x.shape[1:] != train.base_x.shape[1:]:
            raise DataError(f"{name}: {label} inputs are shaped {tuple(s.base_x.shape[1:])} but train "
                            f"inputs {tuple(train.base_x.shape[1:])}; make them match")
    if task == "regression":
        num_outputs = 1
    else:
        # labels 0..C-1; None and empty splits are falsy
        num_outputs = 1 + max(int(s.y.max()) for s in (train, val, test) if s)
    return make_bundle(name, task, train, val, test, num_outputs, kind)


def _user_parts(result: Any, name: str) -> dict[str, Any]:
    if isinstance(result, Mapping):
        unknown = set(result) - set(SPLITS)
        if "train" not in result or unknown:
            keys = ", ".join(map(repr, result))
            raise DataError(f"{name}: the data loader returned a dict of {keys}; {_EXPECTED}")
        return dict(result)
    if isinstance(result, tuple | list) and len(result) in (2, 3) and not _is_array(result[0]):
        return dict(zip(SPLITS, result, strict=False))
    raise DataError(f"{name}: the data loader returned {_describe(result)}; {_EXPECTED}")


def _arrays(part: Any, where: str) -> tuple[Tensor, Tensor]:
    if isinstance(part, torch.utils.data.Dataset):
        x, y = _materialise(part, where)
    elif isinstance(part, tuple | list) and len(part) == 2 and all(map(_is_array, part)):
        x, y = (p if isinstance(p, Tensor) else torch.from_numpy(np.asarray(p)) for p in part)
    else:
        raise DataError(f"{where} is {_describe(part)}; {_EXPECTED}")
    if x.dim() < 2 or len(x) != len(y):
        raise DataError(f"{where}: X is shaped {tuple(x.shape)} and y {tuple(y.shape)}; X needs "
                        "one row per sample and y one target per row")
    return x, y


def _infer_kind(x: Tensor, name: str) -> InputKind:
    if x.dim() == 4 or (x.dim() == 3 and x.dtype == torch.uint8):
        return InputKind.image
    if x.dim() == 3:
        return InputKind.sequence
    if x.dim() == 2:
        return InputKind.tabular
    raise DataError(f"{name}: X is shaped {tuple(x.shape)}; give (N,F) tabular rows, (N,T,F) "
                    "sequences or (N,C,H,W) images, or say data: {as: KIND}")


_DIMS = {InputKind.image: (3, 4), InputKind.tabular: (2,), InputKind.sequence: (3,),
         InputKind.tokens: (2,)}


def _user_split(x: Tensor, y: Tensor, task: str, kind: InputKind, where: str) -> Split:
    if x.dim() not in _DIMS[kind]:
        raise DataError(f"{where}: X is shaped {tuple(x.shape)}, which is not {kind} data "
                        f"({' or '.join(f'{d}-D' for d in _DIMS[kind])}); fix the loader or "
                        "data: {as: KIND}")
    if kind == InputKind.image and x.dim() == 3:  # (N, H, W) greyscale images get a channel
        x = x.unsqueeze(1)
    if kind == InputKind.tokens:
        if x.is_floating_point():
            raise DataError(f"{where}: token ids must be integers (got {x.dtype})")
        x = x.long()
    elif not (kind == InputKind.image and x.dtype == torch.uint8):
        x = x.float()
    return Split(x.contiguous(), _targets(y.reshape(len(y), -1), task, where))


def _targets(y: Tensor, task: str, where: str) -> Tensor:
    if y.shape[1] != 1:
        raise DataError(f"{where}: y is shaped {tuple(y.shape)}; give one target per sample")
    y = y[:, 0]
    if task == "regression":
        return y.float()
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise DataError(f"{where}: classification labels must be integers 0..C-1 (got floats)")
    y = y.long()
    if len(y) and (low := int(y.min())) < 0:
        raise DataError(f"{where}: classification labels must be integers 0..C-1 (got {low})")
    return y


def _materialise(ds: torch.utils.data.Dataset, where: str) -> tuple[Tensor, Tensor]:
    """A Dataset of (x, y) samples -> two tensors, read once in big batches."""
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0], ds.tensors[1]
    loader = torch.utils.data.DataLoader(ds, batch_size=4096, shuffle=False)
    xs, ys = [], []
    try:
        for batch in loader:
            if not (isinstance(batch, list | tuple) and len(batch) == 2):
                raise TypeError("samples are not (x, y) pairs")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
    except (TypeError, RuntimeError, ValueError) as e:
        raise DataError(f"{where}: cannot read the Dataset as (tensor, label) samples "
                        f"({reason(e)}); return tensors from __getitem__, not images") from None
    if not xs:
        raise DataError(f"{where}: the Dataset is empty")
    return torch.cat(xs), torch.cat(ys)


def _is_array(a: Any) -> bool:
    return isinstance(a, Tensor | np.ndarray)


def _describe(obj: Any) -> str:
    if isinstance(obj, tuple | list):
        inner = ", ".join(type(o).__name__ for o in obj[:4])
        return f"a {type(obj).__name__} of {len(obj)} ({inner}{', ...' if len(obj) > 4 else ''})"
    return f"a {type(obj).__name__}"
