"""PyTorch side of the sequence families: padding masks, masked pooling, the recurrent net."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tuner.kinds import InputKind, Inputs
from tuner.models._layers import ACTIVATIONS, per_layer


def lengths_of(x: Tensor, tokens: bool) -> Tensor:
    """Each sample's length: one past its last non-padded step (padding is id 0, or an
    all-zero step of a normalised float sequence). At least 1. (N,T[,F]) -> (N,) int64."""
    real = x != 0 if tokens else (x != 0).any(dim=-1)  # (N, T)
    steps = torch.arange(1, x.shape[1] + 1, device=x.device)
    return (real * steps).amax(dim=1).clamp_min(1)


def pool(out: Tensor, lengths: Tensor, how: str) -> Tensor:
    """(N,T,H) outputs -> (N,H) over each sample's real steps."""
    if how == "last":
        idx = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
        return out.gather(1, idx).squeeze(1)
    mask = (torch.arange(out.shape[1], device=out.device)[None, :] < lengths[:, None])
    mask = mask.unsqueeze(-1)  # (N, T, 1)
    if how == "mean":
        return (out * mask).sum(1) / lengths.view(-1, 1).to(out.dtype)
    return out.masked_fill(~mask, torch.finfo(out.dtype).min).amax(1)


_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentNet(nn.Module):
    """[embedding | projection] -> stacked recurrent layers -> pool over time -> head."""

    # the training loop clips gradients to this norm unless the study sets clip_norm
    default_clip_norm = 1.0

    def __init__(self, p: Mapping[str, Any], inputs: Inputs, num_outputs: int):
        super().__init__()
        self.tokens = inputs.kind == InputKind.tokens
        self.pool_how = str(p["pool"])
        self.bidirectional = bool(p["bidirectional"])
        dropout = float(p["dropout"])
        if self.tokens:
            vocab = int(p["vocab_size"])
            if vocab < 2:
                raise ValueError("the rnn model on token ids needs vocab_size: the number of "
                                 "distinct ids (largest id + 1; id 0 is padding)")
            fan_in = int(p["embedding"])
            self.embed: nn.Module = nn.Embedding(vocab, fan_in, padding_idx=0)
        elif int(p["proj"]) > 0:
            fan_in = int(p["proj"])
            self.embed = nn.Sequential(nn.Linear(inputs.shape[-1], fan_in),
                                       ACTIVATIONS[p["activation"]]())
        else:
            fan_in = inputs.shape[-1]
            self.embed = nn.Identity()
        cell = _CELLS[p["cell"]]
        directions = 2 if self.bidirectional else 1
        # one module per layer, so widths may differ layer by layer
        self.layers = nn.ModuleList()
        for i in range(int(p["depth"])):
            width = per_layer(p, "width", i, int(p["width"]))
            self.layers.append(cell(fan_in, width, batch_first=True,
                                    bidirectional=self.bidirectional))
            fan_in = width * directions
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(fan_in, num_outputs)
        if p["init"] == "orthogonal":
            self._init_orthogonal(p["cell"] == "lstm")

    def _init_orthogonal(self, lstm: bool) -> None:
        for layer in self.layers:
            for name, w in layer.named_parameters():
                if name.startswith("weight_hh"):
                    for gate in w.chunk(w.shape[0] // w.shape[1]):  # each gate's square block
                        nn.init.orthogonal_(gate)
                elif name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(w)
                elif name.startswith("bias"):
                    nn.init.zeros_(w)
                    if lstm and name.startswith("bias_ih"):  # gates i, f, g, o: f is the 2nd
                        h = w.shape[0] // 4
                        nn.init.ones_(w[h:2 * h])

    def forward(self, x: Tensor) -> Tensor:
        lengths = lengths_of(x, self.tokens)
        h = self.embed(x)
        for i, layer in enumerate(self.layers):
            if i:
                h = self.drop(h)
            if self.bidirectional:
                # packed, so the backward direction starts at each sample's last real step
                packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu(), batch_first=True,
                                                           enforce_sorted=False)
                h, _ = layer(packed)
                h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True,
                                                        total_length=x.shape[1])
            else:
                h, _ = layer(h)  # padding comes after the real steps: they never see it
        return self.head(self.drop(pool(h, lengths, self.pool_how)))
