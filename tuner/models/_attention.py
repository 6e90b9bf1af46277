"""PyTorch side of ``model: transformer``: embeddings, positions, masked encoder, pooling."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tuner.kinds import InputKind, Inputs
from tuner.models._recurrent import lengths_of
from tuner.models.transformer import width_and_heads


def sinusoidal(steps: int, width: int) -> Tensor:
    """(steps, width) fixed encodings of Vaswani et al. (2017): sin on even, cos on odd dims."""
    pos = torch.arange(steps, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    out = torch.zeros(steps, width)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
    return out


class TransformerNet(nn.Module):
    """[embedding | projection] + positions -> [cls] -> encoder layers -> pool -> head."""

    # the training loop clips gradients to this norm unless the study sets clip_norm
    default_clip_norm = 1.0

    def __init__(self, p: Mapping[str, Any], inputs: Inputs, num_outputs: int):
        super().__init__()
        width, heads = width_and_heads(p)
        if heads < 1 or width % heads:
            raise ValueError(f"heads {heads} cannot divide d_model {width}; pick heads that "
                             "divide it, or draw the pair as one choice: shape: [128x4, 256x8]")
        self.tokens = inputs.kind == InputKind.tokens
        self.pool_how = str(p["pool"])
        steps = inputs.shape[0] + (1 if self.pool_how == "cls" else 0)
        if self.tokens:
            vocab = int(p["vocab_size"])
            if vocab < 2:
                raise ValueError("the transformer model on token ids needs vocab_size: the "
                                 "number of distinct ids (largest id + 1; id 0 is padding)")
            self.embed: nn.Module = nn.Embedding(vocab, width, padding_idx=0)
        else:
            self.embed = nn.Linear(inputs.shape[-1], width)
        if p["positions"] == "learned":
            self.pos = nn.Parameter(torch.zeros(1, steps, width))
            nn.init.normal_(self.pos, std=0.02)
        else:
            self.register_buffer("pos", sinusoidal(steps, width)[None], persistent=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, width)) if self.pool_how == "cls" else None
        dropout = float(p["dropout"])
        self.scale = math.sqrt(width) if self.tokens else 1.0
        self.drop = nn.Dropout(dropout)
        layers = []
        for _ in range(int(p["depth"])):
            layer = nn.TransformerEncoderLayer(
                width, heads, dim_feedforward=int(p["ff_mult"]) * width, dropout=dropout,
                activation="gelu", batch_first=True, norm_first=p["norm"] == "pre")
            # attention-weight dropout apart from the residual dropout
            layer.self_attn.dropout = float(p["attn_dropout"])
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(width) if p["norm"] == "pre" else nn.Identity()
        self.head = nn.Linear(width, num_outputs)
        # freeze / backbone_lr_scale / layer_lr_decay see embeddings, then each layer, then the head
        self.tuner_blocks = [["embed", "pos", "cls"], *[[f"layers.{i}"] for i in range(len(layers))]]
        self.tuner_head = "head"

    def forward(self, x: Tensor) -> Tensor:
        lengths = lengths_of(x, self.tokens)
        h = self.embed(x) * self.scale
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
            lengths = lengths + 1
        h = self.drop(h + self.pos[:, : h.shape[1]])
        steps = torch.arange(h.shape[1], device=h.device)
        pad = steps[None, :] >= lengths[:, None]  # True where a step is padding
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=pad)
        h = self.final_norm(h)
        if self.cls is not None:
            pooled = h[:, 0]
        else:
            real = (~pad).unsqueeze(-1).to(h.dtype)
            pooled = (h * real).sum(1) / lengths.view(-1, 1).to(h.dtype)
        return self.head(self.drop(pooled))
