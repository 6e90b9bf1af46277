"""PyTorch side of ``model: cnn1d``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from tuner.kinds import InputKind, Inputs
from tuner.models._layers import ACTIVATIONS, block, initialise, per_layer
from tuner.models._recurrent import lengths_of, pool


class ConvNet1d(nn.Module):
    def __init__(self, p: Mapping[str, Any], inputs: Inputs, num_outputs: int):
        super().__init__()
        self.tokens = inputs.kind == InputKind.tokens
        self.pool_how = str(p["pool"])
        if self.tokens:
            if int(p["vocab_size"]) < 2:
                raise ValueError("the cnn1d model on token ids needs vocab_size: the number of "
                                 "distinct ids (largest id + 1; id 0 is padding)")
            self.embed: nn.Module = nn.Embedding(int(p["vocab_size"]), int(p["embedding"]),
                                                 padding_idx=0)
            c = int(p["embedding"])
        else:
            self.embed = nn.Identity()
            c = inputs.shape[-1]
        bn = bool(p["batch_norm"])
        layers: list[nn.Module] = []
        for i in range(int(p["depth"])):
            out = per_layer(p, "channels", i, int(p["channels"]))
            kernel = per_layer(p, "kernel_size", i, int(p["kernel_size"]))
            dil = int(p["dilation"]) ** i
            if p.get("residual"):
                layers.append(Residual1d(p, c, out, kernel, dil, bn))
            else:
                layers += block(p, _conv(c, out, kernel, dil, bn), _norm(out, bn))
            c = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_outputs)
        initialise(self, p["init"], p["activation"])

    def forward(self, x: Tensor) -> Tensor:
        lengths = lengths_of(x, self.tokens)
        h = self.body(self.embed(x).transpose(1, 2))  # (N, C, T)
        return self.head(pool(h.transpose(1, 2), lengths, self.pool_how))


class Residual1d(nn.Module):
    """conv -> [norm] -> act -> conv -> [norm], plus the input (through a 1x1 conv and norm
    where the width changes), then act -> [dropout]."""

    def __init__(self, p: Mapping[str, Any], c: int, out: int, kernel: int, dil: int, bn: bool):
        super().__init__()
        first = block({**p, "dropout": 0}, _conv(c, out, kernel, dil, bn), _norm(out, bn))
        self.body = nn.Sequential(*first, _conv(out, out, kernel, dil, bn),
                                  *([_norm(out, bn)] if bn else []))
        self.shortcut: nn.Module = nn.Identity() if c == out else nn.Sequential(
            _conv(c, out, 1, 1, bn), *([_norm(out, bn)] if bn else []))
        self.out = nn.Sequential(ACTIVATIONS[p["activation"]](),
                                 *([nn.Dropout(float(p["dropout"]))] if float(p["dropout"]) else []))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


def _conv(c: int, out: int, kernel: int, dil: int, bn: bool) -> nn.Conv1d:
    # "same": every step keeps its place, so padded steps stay at the end for the pooling
    return nn.Conv1d(c, out, kernel, dilation=dil, padding="same", bias=not bn)


def _norm(out: int, bn: bool) -> nn.Module | None:
    return nn.BatchNorm1d(out) if bn else None
