"""``data: {name: text, path: reviews.csv, text: review, label: sentiment}``: text to classify.

A CSV, TSV or JSON-lines file (by its extension: ``.csv``, ``.tsv``, ``.jsonl`` / ``.json``)
with a column of text and a column of labels. The labels are the classes (strings or
integers, sorted: ``0..C-1``). The test split is another file of the same columns (``test:
reviews_test.csv``) or a seeded fraction of the file (``test: 0.2``, the default); the
validation split is carved from what is left, as for every dataset.

The texts become token ids of a tokenizer from Hugging Face ``tokenizers``, trained offline
on the training split only (``tokenizer: wordpiece`` or ``bpe``, ``vocab_size`` ids), or,
when the model is a pretrained encoder (``model: hf:PATH``), that model's own tokenizer.
Sequences are cut at ``max_len`` tokens and padded at the end with id 0. ``vocab_size`` and
``max_len`` are defaults here and knobs of the search space too: a trial that draws other
values gets its own tokenization (the tokenizer trained on its training split, cached per
worker). ``tuner retrain`` saves the tokenizer beside the model (``tokenizer.json``), so
:func:`tuner.results.retrain.classify_text` can label new text.

Bad input is one line before anything is written: a missing file or column, an empty text
or label, labels that are not classes (fractions, or a single class).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.data import Request, Source, register
from tuner.kinds import InputKind
from tuner.registry import Knob

if TYPE_CHECKING:
    from tuner.data._bundle import DataBundle

NAME = "text"
TOKENIZERS = ("wordpiece", "bpe")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
DEFAULT_TEST_FRACTION = 0.2

# data knobs a search space may draw (the tokenization follows them per trial)
KNOBS = {
    "vocab_size": Knob(8000, "ids of the tokenizer trained on the training split", low=16),
    "max_len": Knob(128, "tokens kept per text (longer texts are cut)", low=2),
}


@dataclass(frozen=True)
class TextOptions:
    """The study's ``data: {name: text, ...}`` block; paths relative to ``base_dir``."""

    path: str
    text: str = "text"
    label: str = "label"
    test: str | float = DEFAULT_TEST_FRACTION  # another file, or a fraction of this one
    tokenizer: str = "wordpiece"
    vocab_size: int = 8000
    max_len: int = 128
    base_dir: str | None = None
    # a pretrained model's folder whose tokenizer to use instead (``model: hf:PATH``)
    pretrained: str | None = None

    @classmethod
    def of(cls, block: Mapping[str, Any], base_dir: str | None) -> TextOptions:
        """The options of a study file's data block, or ValueError naming the fix."""
        given = {k: v for k, v in block.items() if k not in ("name", "as")}
        known = {"path", "text", "label", "test", "tokenizer", "vocab_size", "max_len"}
        if unknown := sorted(set(given) - known):
            raise ValueError(f"data: unknown key {unknown[0]!r} for text data; use "
                             f"{', '.join(sorted(known))}")
        path = given.get("path")
        if not isinstance(path, str) or not path:
            raise ValueError("data: text data needs path: the CSV, TSV or JSON-lines file")
        if _format(path) is None:
            raise ValueError(f"data: {path}: give a .csv, .tsv or .jsonl file")
        for key in ("text", "label"):
            if key in given and (not isinstance(given[key], str) or not given[key]):
                raise ValueError(f"data: {key}: give the name of the {key} column")
        test = given.get("test", DEFAULT_TEST_FRACTION)
        if isinstance(test, bool) or not isinstance(test, str | int | float):
            raise ValueError("data: test: give a file of the same columns or a fraction like 0.2")
        if isinstance(test, int | float) and not 0 < test < 1:
            raise ValueError(f"data: test: a fraction must be between 0 and 1 (got {test})")
        if isinstance(test, str) and _format(test) is None:
            raise ValueError(f"data: test: {test}: give a .csv, .tsv or .jsonl file")
        tok = given.get("tokenizer", "wordpiece")
        if tok not in TOKENIZERS:
            raise ValueError(f"data: tokenizer: unknown {tok!r}; use one of {', '.join(TOKENIZERS)}"
                             " (a pretrained model brings its own)")
        for key, knob in KNOBS.items():
            if key in given and (why := knob.problem(key, given[key])) is not None:
                raise ValueError(f"data: {why}")
        return cls(path=path, text=given.get("text", "text"), label=given.get("label", "label"),
                   test=float(test) if not isinstance(test, str) else test, tokenizer=tok,
                   vocab_size=int(given.get("vocab_size", 8000)),
                   max_len=int(given.get("max_len", 128)), base_dir=base_dir)

    def block(self) -> dict[str, Any]:
        """Back to the study file's data block (stored with the study)."""
        return {"name": NAME, "path": self.path, "text": self.text, "label": self.label,
                "test": self.test, "tokenizer": self.tokenizer, "vocab_size": self.vocab_size,
                "max_len": self.max_len}


def _format(path: str) -> str | None:
    from pathlib import PurePath

    return FORMATS.get(PurePath(path).suffix.lower())


def _load(request: Request) -> DataBundle:
    from tuner.data._text import load

    if not isinstance(request.options, TextOptions):
        from tuner.errors import DataError

        raise DataError("data: text needs its block: {name: text, path: FILE, text: COLUMN, "
                        "label: COLUMN}")
    return load(request.options, request)


register(Source(NAME, "classification", InputKind.tokens,
                "text classification from a CSV, TSV or JSON-lines file, tokenized offline",
                _load))
