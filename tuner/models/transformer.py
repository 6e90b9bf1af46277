"""``model: transformer``: a Transformer encoder over token ids or float sequences.

Token ids go through an embedding of ``d_model`` dimensions (id 0 is padding), float
sequences through a Linear projection to ``d_model``; a positional encoding is added
(``positions``: ``learned`` or ``sinusoidal``); then ``depth`` encoder layers of ``heads``
attention heads (``nn.TransformerEncoderLayer``, so PyTorch's fused attention kernels run on
a GPU), a feed-forward block ``ff_mult`` x ``d_model`` wide, ``dropout`` on the residual
branches and ``attn_dropout`` on the attention weights, normalised before (``norm: pre``,
the stable default) or after (``post``, the original) each sub-layer. The sequence becomes
one vector by a learned ``cls`` vector put in front (as in BERT) or the ``mean`` over real
steps; a linear head reads it.

Padding is masked: sequences come padded at the end (id 0, or an all-zero step of a
normalised float sequence: the recurrent families' batches), and no position attends to a
padded one or is pooled. ``heads`` must divide ``d_model``; a study that searches both draws
them as one choice with ``shape: [128x4, 256x8]`` (d_model x heads), or keeps every pair it
can draw valid (``tuner check`` refuses a space that can draw a pair that does not divide).
Warm-up (``warmup_epochs``) and ``schedule: cosine`` are the usual recipe; gradients are
clipped to norm 1.0 unless the study says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tuner.kinds import InputKind, Inputs
from tuner.models import Family, register
from tuner.registry import Knob

if TYPE_CHECKING:
    from torch import nn

KNOBS = {
    "d_model": Knob(128, "width of the embeddings and of every layer", low=1),
    "heads": Knob(4, "attention heads per layer (must divide d_model)", low=1),
    "shape": Knob("", "d_model and heads drawn as one choice, e.g. 256x8 (empty: use "
                  "d_model and heads)"),
    "depth": Knob(2, "encoder layers", low=1),
    "ff_mult": Knob(4, "feed-forward width as a multiple of d_model", low=1),
    "dropout": Knob(0.1, "dropout on the residual branches and before the head", low=0, high=1,
                    high_open=True),
    "attn_dropout": Knob(0.0, "dropout on the attention weights", low=0, high=1, high_open=True),
    "positions": Knob("learned", "positional encoding", choices=("learned", "sinusoidal")),
    "pool": Knob("cls", "how the sequence becomes one vector", choices=("cls", "mean")),
    "norm": Knob("pre", "layer norm before (pre) or after (post) each sub-layer",
                 choices=("pre", "post")),
    "vocab_size": Knob(0, "token ids the embedding holds (largest id + 1; id 0 is padding; "
                       "text data fills it in)", low=0),
}


def parse_shape(value: Any) -> tuple[int, int] | None:
    """``"256x8"`` -> (256, 8); None when ``value`` is not of that form."""
    parts = str(value).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def width_and_heads(p: Mapping[str, Any]) -> tuple[int, int]:
    """(d_model, heads) of params ``p``: from ``shape`` when given, else the two knobs."""
    if p.get("shape"):
        pair = parse_shape(p["shape"])
        if pair is None:
            raise ValueError(f"shape: {p['shape']!r} is not d_model x heads; write it like 256x8")
        return pair
    return int(p["d_model"]), int(p["heads"])


def check_space(values: Mapping[str, Sequence[Any] | None]) -> str | None:
    """Why a space that can draw these values is invalid (None: it is not). ``values`` maps a
    knob to every value the space can draw for it (None: too many to list)."""
    for s in values.get("shape") or ():
        if s == "":
            continue
        pair = parse_shape(s)
        if pair is None:
            return f"space.shape: {s!r} is not d_model x heads; write choices like 256x8"
        if pair[1] < 1 or pair[0] % pair[1]:
            return (f"space.shape: {s}: {pair[1]} heads cannot divide d_model {pair[0]}; "
                    "pick a multiple of the heads")
    widths = values.get("d_model", (KNOBS["d_model"].default,))
    heads = values.get("heads", (KNOBS["heads"].default,))
    if widths is None or heads is None:
        if "heads" in values or "d_model" in values:
            return ("space: d_model and heads are searched over ranges, so a draw may have "
                    "heads that do not divide d_model; give both as lists of choices that "
                    "always divide, or draw the pair as one choice: shape: [128x4, 256x8]")
        return None
    for d in widths:
        for h in heads:
            if int(h) < 1 or int(d) % int(h):
                return (f"space: heads {h} cannot divide d_model {d}, and the space can draw "
                        "that pair; use heads and widths that always divide, or draw the pair "
                        "as one choice: shape: [128x4, 256x8]")
    return None


def build(p: Mapping[str, Any], inputs: Inputs, num_outputs: int) -> nn.Module:
    from tuner.models._attention import TransformerNet

    return TransformerNet(p, inputs, num_outputs)


register(Family(
    name="transformer",
    summary="Transformer encoder (self-attention) over token ids or sequences",
    inputs=frozenset({InputKind.sequence, InputKind.tokens}),
    knobs=KNOBS,
    build=build,
    check_space=check_space,
))
