"""PyTorch side of ``model: cnn1d``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from tuner.kinds import InputKind, Inputs
from tuner.models._layers import block, initialise, per_layer
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
        bn, kernel = bool(p["batch_norm"]), int(p["kernel_size"])
        layers: list[nn.Module] = []
        for i in range(int(p["depth"])):
            out = per_layer(p, "channels", i, int(p["channels"]))
            dil = int(p["dilation"]) ** i
            layers += block(p, nn.Conv1d(c, out, kernel, dilation=dil, padding="same",
                                         bias=not bn),
                            nn.BatchNorm1d(out) if bn else None)
            c = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_outputs)
        initialise(self, p["init"], p["activation"])

    def forward(self, x: Tensor) -> Tensor:
        lengths = lengths_of(x, self.tokens)
        h = self.body(self.embed(x).transpose(1, 2))  # (N, C, T)
        return self.head(pool(h.transpose(1, 2), lengths, self.pool_how))
