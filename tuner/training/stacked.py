"""K members' weights as one: :class:`StackedMLP`, the layers of K same-shape members of a
fusable family stacked along a leading axis (weights (K, out, in), biases (K, out), dropout
(K,)), and :class:`StackedOptimizer`, torch's sgd, sgd with momentum, adam and adamw over
those stacks with per-member hyperparameters. Both write each member back into its own
module and torch optimizer state for its checkpoint. Pure PyTorch; :mod:`tuner.training.fuse` trains
them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

OPTIMIZERS = ("sgd", "sgd_momentum", "adam", "adamw")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch's defaults, which make_optimizer keeps


class StackedOptimizer:
    """One optimizer over K members' stacked parameters (each of shape (K, ...)), with
    per-member ``lr``, ``weight_decay`` and ``momentum`` tensors of shape (K,). The update
    of each slice is torch's own: SGD (L2 in the gradient, momentum buffer started as the
    first gradient, no dampening), Adam (L2 in the gradient) and AdamW (decoupled decay)."""

    def __init__(self, name: str, params: Sequence[Tensor], *, lr: Tensor, weight_decay: Tensor,
                 momentum: Tensor):
        if name not in OPTIMIZERS:
            raise ValueError(f"fusion has no {name} optimizer; use one of {', '.join(OPTIMIZERS)}")
        self.name, self.params = name, list(params)
        self.lr, self.weight_decay, self.momentum = lr, weight_decay, momentum
        self.steps = 0
        # sgd_momentum: momentum buffers; adam(w): first and second moments
        self.state: dict[str, list[Tensor]] = {}

    def _per(self, v: Tensor, p: Tensor) -> Tensor:
        return v.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        if self.name in ("sgd", "sgd_momentum"):
            self._sgd()
        else:
            self._adam()

    def _sgd(self) -> None:
        bufs = self.state.get("momentum_buffer")
        first = bufs is None
        if first and self.name == "sgd_momentum":
            bufs = self.state["momentum_buffer"] = []
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad + self._per(self.weight_decay, p) * p
            if self.name == "sgd_momentum":
                assert bufs is not None
                if first:
                    bufs.append(d.clone())
                else:
                    bufs[i].mul_(self._per(self.momentum, p)).add_(d)
                d = bufs[i]
            p.sub_(self._per(self.lr, p) * d)

    def _adam(self) -> None:
        b1, b2 = ADAM_BETAS
        if "exp_avg" not in self.state:
            self.state["exp_avg"] = [torch.zeros_like(p) for p in self.params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in self.params]
        c1, c2 = 1 - b1 ** self.steps, math.sqrt(1 - b2 ** self.steps)
        # the update of each parameter as torch's single-tensor Adam writes it, op for op,
        # in foreach calls: a dozen dispatches a step instead of a dozen per parameter,
        # which on a small model were a quarter of a fused step
        ps, ms, vs = self.params, self.state["exp_avg"], self.state["exp_avg_sq"]
        gs = [p.grad for p in ps]
        if self.name == "adamw":
            torch._foreach_mul_(ps, self._each(1 - self.lr * self.weight_decay))
        else:
            gs = torch._foreach_add(gs, torch._foreach_mul(ps, self._each(self.weight_decay)))
        torch._foreach_lerp_(ms, gs, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, c2)
        torch._foreach_add_(denom, ADAM_EPS)
        update = torch._foreach_mul(ms, self._each(self.lr / c1))
        torch._foreach_div_(update, denom)
        torch._foreach_sub_(ps, update)

    def _each(self, v: Tensor) -> list[Tensor]:
        """A (K,) tensor viewed to broadcast against each parameter."""
        return [self._per(v, p) for p in self.params]

    def keep(self, rows: Tensor) -> None:
        """Keep only the members at ``rows`` (the others left the stack)."""
        for name in ("lr", "weight_decay", "momentum"):
            setattr(self, name, getattr(self, name)[rows])
        for name, tensors in self.state.items():
            self.state[name] = [t[rows] for t in tensors]

    def member_state(self, row: int, index: int) -> dict[str, Tensor]:
        """The torch optimizer state of member ``row``'s parameter ``index``."""
        if self.name == "sgd_momentum" and "momentum_buffer" in self.state:
            return {"momentum_buffer": self.state["momentum_buffer"][index][row].clone()}
        if "exp_avg" in self.state:
            return {"step": torch.tensor(float(self.steps)),
                    "exp_avg": self.state["exp_avg"][index][row].clone(),
                    "exp_avg_sq": self.state["exp_avg_sq"][index][row].clone()}
        return {}


class StackedMLP:
    """K ``mlp`` modules of one shape as stacked weights (K, out, in) and biases (K, out),
    with per-member dropout. Built from the members' own modules, and written back into
    them for their checkpoints."""

    def __init__(self, modules: Sequence[nn.Module]):
        linears = [[m for m in mod.modules() if isinstance(m, nn.Linear)] for mod in modules]
        shapes = {tuple(tuple(lin.weight.shape) for lin in ls) for ls in linears}
        if len(shapes) != 1:
            raise ValueError(f"fusion needs members of one shape; got {len(shapes)} shapes")
        acts = {type(m) for mod in modules for m in mod.modules()
                if not isinstance(m, nn.Linear | nn.Dropout | nn.Flatten | nn.Sequential)}
        if len(acts) > 1 or acts & {nn.PReLU, nn.BatchNorm1d}:
            raise ValueError("fusion needs one parameter-free activation and no batch norm; "
                             f"got {', '.join(sorted(a.__name__ for a in acts))}")
        first = modules[0]
        self.act: nn.Module = next((m for m in first.modules() if type(m) in acts), nn.Identity())
        for mod, ls in zip(modules, linears, strict=True):
            if [id(p) for p in mod.parameters()] != [id(p) for lin in ls
                                                      for p in (lin.weight, lin.bias)]:
                raise ValueError("fusion supports Linear layers with biases only")
        self.modules = list(modules)
        self.linears = linears
        with torch.no_grad():
            self.params = [torch.stack([ls[j].weight if t == 0 else ls[j].bias
                                        for ls in linears]).detach().clone().requires_grad_()
                           for j in range(len(linears[0])) for t in (0, 1)]
        drops = [next((m.p for m in mod.modules() if isinstance(m, nn.Dropout)), 0.0)
                 for mod in modules]
        self.dropout = torch.tensor(drops, device=self.params[0].device)

    @property
    def k(self) -> int:
        return self.params[0].shape[0]

    def forward(self, x: Tensor, train: bool) -> Tensor:
        """x: (K, B, ...) per-member batches, or (B, ...) one batch for every member ->
        (K, B, outputs)."""
        h = x.flatten(2) if train else x.flatten(1)
        n = len(self.params) // 2
        drop = train and bool((self.dropout > 0).any())
        for j in range(n):
            w, b = self.params[2 * j], self.params[2 * j + 1]
            if h.dim() == 2:  # one batch for all members: one GEMM against their weights side by side
                k, o, i = w.shape
                h = (h @ w.permute(2, 0, 1).reshape(i, k * o)).view(-1, k, o).transpose(0, 1)
                h = h + b.unsqueeze(1)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if j < n - 1:
                h = self.act(h)
                if drop:
                    p = self.dropout.view(-1, 1, 1)
                    keep = torch.rand_like(h) >= p
                    h = h * keep / (1 - p)
        return h

    def keep(self, rows: Tensor, members: Sequence[int]) -> None:
        with torch.no_grad():
            self.params = [p[rows].detach().clone().requires_grad_() for p in self.params]
        self.dropout = self.dropout[rows]
        self.modules = [self.modules[i] for i in members]
        self.linears = [self.linears[i] for i in members]

    @torch.no_grad()
    def write_back(self, row: int) -> None:
        """Copy member ``row``'s slices into its own module."""
        for j, lin in enumerate(self.linears[row]):
            lin.weight.copy_(self.params[2 * j][row])
            lin.bias.copy_(self.params[2 * j + 1][row])
