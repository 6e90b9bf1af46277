"""PyTorch side of ``model: hf:PATH``: a pretrained encoder, pooled, with a fresh head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn


class Encoder(nn.Module):
    """A ``transformers`` encoder loaded offline -> pool -> dropout -> linear head."""

    def __init__(self, folder: str, p: Mapping[str, Any], num_outputs: int):
        super().__init__()
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # "weights not used: pooler..." is expected here
        hf_logging.disable_progress_bar()
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        dropout = float(p["dropout"])
        if dropout >= 0:
            for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                         "attention_dropout"):
                if hasattr(config, name):
                    setattr(config, name, dropout)
        self.encoder = AutoModel.from_pretrained(folder, config=config, local_files_only=True)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # untrained for this task; the head reads the tokens
        self.pool_how = str(p["pool"])
        self.drop = nn.Dropout(dropout if dropout >= 0 else 0.1)
        self.head = nn.Linear(int(config.hidden_size), num_outputs)
        self.tuner_blocks = _blocks(self.encoder, int(config.num_hidden_layers))
        self.tuner_head = "head"

    def forward(self, x: Tensor) -> Tensor:
        mask = (x != 0).long()
        h = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state
        if self.pool_how == "cls":
            pooled = h[:, 0]
        else:
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1)
        return self.head(self.drop(pooled))


def _blocks(encoder: nn.Module, layers: int) -> list[list[str]]:
    """The encoder's blocks for freeze and layer-wise decay: everything before the layers
    (the embeddings) first, then each layer."""
    stack = next((name for name, m in encoder.named_modules()
                  if isinstance(m, nn.ModuleList) and len(m) == layers), None)
    if stack is None:
        return [["encoder"]]
    first = [f"encoder.{n}" for n, c in encoder.named_children()
             if not stack.startswith(n) and any(True for _ in c.parameters())]
    return [first, *[[f"encoder.{stack}.{i}"] for i in range(layers)]]
