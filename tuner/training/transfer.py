"""Transfer learning: start a model from a state_dict on disk, freeze its leading blocks, and
give its backbone a smaller learning rate than its head. Pure PyTorch (imported inside the
functions, so the path helpers stay torch-free); nothing is ever downloaded.

    resolve(path, base_dir)            where a ``weights:`` path points (relative to the study file)
    load_weights(model, path)          weights_only=True; keys must match the model's, but for
                                       its head, which may be missing or of another shape
    blocks(model)                      the model's parameters in blocks, the head last
    freeze(model, n)                   the first n blocks stop learning, their norms' running
                                       statistics too
    param_groups(model, lr, scale, decay)  the head at lr, the backbone at lr * scale, each
                                       block below by decay more (layer-wise decay)

A model's blocks: those it names (``model.tuner_blocks``, module names, and
``model.tuner_head``, as the torchvision family sets), else one block per weight layer
(Linear, Conv, RNN, Embedding, with the norms after it) of an ``nn.Sequential``, else one per
top-level child with parameters. The last block is the head: it is never frozen, learns at
the full rate, and a pretrained head of another shape (other classes), or none at all (a
backbone saved without its head), is left fresh. Every other key must be in the file, and the
file must hold no key the model lacks: a backbone trained on another dataset loads, a file of
another architecture is one line naming its first missing or unexpected key.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import UserCodeError
from tuner.usercode import one_line

if TYPE_CHECKING:
    from torch import Tensor, nn

SAVE_HINT = "save it with torch.save(model.state_dict(), PATH)"


def resolve(path: str, base_dir: str | None) -> Path:
    """``path`` as given, relative to the study file's folder (else the working directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir or ".").resolve() / p


def check_file(path: str, base_dir: str | None) -> Path:
    """The resolved path, or one line saying where tuner looked."""
    p = resolve(path, base_dir)
    if not p.is_file():
        where = f"relative to the study file's folder {base_dir}" if base_dir else \
            "relative to the working directory"
        raise UserCodeError(f"weights: {path}: no file at {p} ({where}); tuner never downloads "
                            "weights: put the state_dict there or fix the path")
    return p


def load_weights(model: nn.Module, path: Path) -> list[str]:
    """Load the state_dict at ``path`` into ``model`` (``weights_only=True``). Every key but
    the head's must match; the first conv's kernel is adapted to the model's input channels,
    and a head missing from the file or of another shape is left as built. Returns the keys
    left as built; what was loaded is one line in ``model.tuner_weights`` (the training loop
    keeps it in the trial's info)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserCodeError(f"weights: {path} is not a state_dict that loads with "
                            f"weights_only=True ({one_line(e)}); {SAVE_HINT}") from e
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserCodeError(f"weights: {path} holds a {type(state).__name__}, not a state_dict "
                            f"of tensors; {SAVE_HINT}")
    own = model.state_dict()
    head = _head_keys(model)
    absent = [k for k in own if k not in state]
    missing = [k for k in absent if k not in head]
    if missing:
        raise UserCodeError(f"weights: {path} lacks {missing[0]!r} (and {len(missing) - 1} more "
                            "keys) that the model has; give the state_dict of this architecture")
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise UserCodeError(f"weights: {path} has {unexpected[0]!r} (and {len(unexpected) - 1} "
                            "more keys) that the model lacks; give the state_dict of this "
                            "architecture")
    first = _first_conv(model)
    state, kept = dict(state), []
    for k in absent:  # the head's, not in the file
        state[k], kept = own[k], [*kept, k]
    for k, v in list(state.items()):
        want = own[k]
        if v.shape == want.shape:
            continue
        if (first is not None and k == f"{first}.weight" and v.dim() == 4
                and v.shape[0] == want.shape[0] and v.shape[2:] == want.shape[2:]):
            state[k] = adapt_input_conv(v, want.shape[1])
        elif k in head:
            state[k], kept = want, [*kept, k]
        else:
            raise UserCodeError(f"weights: {path}: {k!r} is shaped {tuple(v.shape)} but the "
                                f"model's is {tuple(want.shape)}; give the state_dict of the "
                                "same architecture and widths")
    model.load_state_dict(state)
    note = f"{path.name}: {len(own) - len(kept)} of {len(own)} tensors loaded"
    if kept:
        why = "missing from the file" if set(kept) <= set(absent) else \
            "of another shape" if not set(kept) & set(absent) else "missing or of another shape"
        note += f"; head left as built ({', '.join(kept)}: {why})"
    model.tuner_weights = note
    return kept


def _head_keys(model: nn.Module) -> set[str]:
    """The state_dict keys of the model's head: its parameters and buffers (a norm's running
    statistics)."""
    prefixes = {n.rsplit(".", 1)[0] for n in blocks(model)[-1]}
    return {k for k in model.state_dict() if k.rsplit(".", 1)[0] in prefixes}


def adapt_input_conv(w: Tensor, channels: int) -> Tensor:
    """A first-conv kernel ``(out, c, k, k)`` for ``channels`` inputs: summed over its input
    channels for one (a grey image lights all three colours alike), else tiled and scaled so
    the response to a uniform image is unchanged."""
    if channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = -(-channels // w.shape[1])
    return w.repeat(1, reps, 1, 1)[:, :channels] * (w.shape[1] / channels)


def blocks(model: nn.Module) -> list[list[str]]:
    """The names of the model's parameters, block by block, the head last (see the module
    docstring). Parameters no block claims belong to none: never frozen, backbone rate."""
    from torch import nn

    names = getattr(model, "tuner_blocks", None)
    head = getattr(model, "tuner_head", None)
    if names is not None and head is not None:
        groups = [list(g) for g in names] + [[head]]
    else:
        children = list(model.named_children())
        weight_layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase, nn.Embedding)
        groups = []
        for name, child in children:
            if not any(True for _ in child.parameters()):
                continue
            starts = not isinstance(model, nn.Sequential) or isinstance(child, weight_layers)
            if starts or not groups:
                groups.append([name])
            else:
                groups[-1].append(name)
        if not groups:
            return [[]]
    params = dict(model.named_parameters())
    return [[p for p in params if any(p == m or p.startswith(f"{m}.") for m in g)]
            for g in groups]


def freeze(model: nn.Module, n: int) -> None:
    """Stop the first ``n`` blocks from learning (``requires_grad = False``). Their batch
    norms stay in eval mode, whatever ``model.train()`` the loop calls later: a frozen block
    keeps the running statistics it was loaded with, so its output means what the next block
    learnt to read."""
    if n <= 0:
        return
    from torch.nn.modules.batchnorm import _NormBase

    bs = blocks(model)
    if n > len(bs) - 1:
        raise UserCodeError(f"freeze: {n} but this model has {len(bs) - 1} blocks before its "
                            f"head; use freeze: {max(len(bs) - 1, 0)} or less")
    params = dict(model.named_parameters())
    frozen = {name for block in bs[:n] for name in block}
    for name in frozen:
        params[name].requires_grad_(False)
    for name, m in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)]
        if isinstance(m, _NormBase) and m.track_running_stats and own and set(own) <= frozen:
            m.train = types.MethodType(_stay_in_eval, m)  # type: ignore[method-assign]
            m.eval()


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen norm: always eval (``nn.Module.train`` recurses through
    ``children()``, calling each child's own ``train``, so this survives ``model.train()``)."""
    from torch import nn

    return nn.Module.train(self, False)


def param_groups(model: nn.Module, lr: float, scale: float,
                 decay: float = 1.0) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the trainable parameters; with ``scale != 1`` or
    ``decay != 1`` the head first at ``lr``, then the backbone's blocks from the last to the
    first at ``lr * scale * decay**k`` (k = 1 for the block under the head: layer-wise
    learning-rate decay, as in ULMFiT and ELECTRA); parameters no block claims go at
    ``lr * scale``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if scale == 1 and decay == 1:
        return [{"params": [p for _, p in named]}]
    bs = blocks(model)
    rate = {n: lr for n in bs[-1]}
    for k, block in enumerate(reversed(bs[:-1])):
        rate.update({n: lr * scale * decay ** (k + 1) for n in block})
    groups: dict[float, list[Any]] = {lr: []}  # the head's group first
    for n, p in named:
        groups.setdefault(rate.get(n, lr * scale), []).append(p)
    return [{"params": ps, "lr": r} for r, ps in groups.items() if ps]


def _first_conv(model: nn.Module) -> str | None:
    from torch import nn

    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
