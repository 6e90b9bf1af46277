"""Torch side of text data (:mod:`tuner.data.text`): read the file, check it, train the
tokenizer on the training split, encode, and re-tokenize when a trial draws another
``vocab_size`` or ``max_len``."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tuner.data import Request
from tuner.data._bundle import TEST_SEED, DataBundle, Split, carve, make_bundle
from tuner.data.text import NAME, TextOptions, _format
from tuner.errors import DataError
from tuner.kinds import InputKind

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PAD, UNK = "[PAD]", "[UNK]"
TOKENIZER_FILE = "tokenizer.json"
# tokenizations kept per worker (each is one int64 tensor of the whole corpus)
CACHE_SIZE = 4


def where(path: str, base_dir: str | None, data_dir: str | None = None) -> Path:
    """``path`` as given, else relative to the study file's folder, else to the data folder
    (``--data-dir``, where the built-in datasets live)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    first = Path(base_dir or ".").resolve() / p
    if not first.is_file() and data_dir is not None and (Path(data_dir) / p).is_file():
        return (Path(data_dir) / p).resolve()
    return first


def read_rows(path: str, options: TextOptions,
              data_dir: str | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels as strings) of one file, or DataError naming the row and the fix."""
    file = where(path, options.base_dir, data_dir)
    fmt = _format(path)
    if not file.is_file():
        rel = f" (relative to the study file, or to the data folder {data_dir})" if data_dir \
            else ""
        raise DataError(f"data: {path}: no such file at {file}{rel}; fix path:")
    try:
        with file.open(encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                rows = []
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DataError(f"data: {path} line {n} is not JSON ({e.msg}); "
                                            "give one JSON object per line") from None
                        if not isinstance(rows[-1], dict):
                            raise DataError(f"data: {path} line {n} is not a JSON object; "
                                            "give one object per line with the columns")
                columns = sorted({k for r in rows for k in r})
            else:
                reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
                columns = list(reader.fieldnames or [])
                rows = list(reader)
    except UnicodeDecodeError:
        raise DataError(f"data: {path} is not UTF-8 text; save it as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise DataError(f"data: cannot read {path} ({e}); fix the file") from None
    if not rows:
        raise DataError(f"data: {path} holds no rows; give a file with a header and rows")
    for key, col in (("text", options.text), ("label", options.label)):
        if col not in columns:
            raise DataError(f"data: {path} has no column {col!r} (its columns: "
                            f"{', '.join(map(str, columns))}); set {key}: to one of them")
    texts, labels = [], []
    for n, r in enumerate(rows, 1 if fmt == "jsonl" else 2):
        text, label = r.get(options.text), r.get(options.label)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"data: {path} row {n}: the {options.text!r} text is empty; fill it "
                            "in or remove the row")
        if label is None or str(label).strip() == "":
            raise DataError(f"data: {path} row {n}: the {options.label!r} label is empty; fill "
                            "it in or remove the row")
        texts.append(text)
        labels.append(str(label).strip())
    return texts, labels


def classes_of(labels: list[str], path: str) -> list[str]:
    """The sorted classes (integers numerically), or DataError when labels are not classes."""
    distinct = set(labels)
    ints = all(_is_int(v) for v in distinct)
    if not ints:
        frac = next((v for v in sorted(distinct) if _is_float(v)), None)
        if frac is not None:
            raise DataError(f"data: {path}: label {frac!r} is a number but not a class; text "
                            "data classifies: give class labels (names or integers)")
    if len(distinct) < 2:
        raise DataError(f"data: {path}: every label is {labels[0]!r}; classifying needs at "
                        "least two classes")
    return sorted(distinct, key=lambda v: (int(v), v) if ints else (0, v))


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True


def _is_float(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


# ---- tokenizers ----------------------------------------------------------------------------
def train_tokenizer(texts: list[str], kind: str, vocab_size: int) -> Tokenizer:
    """A WordPiece or BPE tokenizer trained on ``texts`` only (offline); [PAD] is id 0."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer: Any = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK],
                                           show_progress=False)
        tok.decoder = decoders.BPEDecoder()
    else:
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK],
                                            show_progress=False)
        tok.decoder = decoders.WordPiece()
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer)
    return tok


def pretrained_tokenizer(folder: str) -> Tokenizer:
    """The tokenizer a pretrained model's folder holds (``tokenizer.json``, else a BERT
    ``vocab.txt``); its padding id must be 0, as tuner pads with 0."""
    from tokenizers import Tokenizer

    path = Path(folder)
    if (path / TOKENIZER_FILE).is_file():
        tok = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    elif (path / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = True
        config = path / "tokenizer_config.json"
        if config.is_file():
            lower = bool(json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True))
        tok = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)._tokenizer
    else:
        raise DataError(f"model: {folder} holds no tokenizer (tokenizer.json or vocab.txt); "
                        "save one there with tokenizer.save_pretrained(FOLDER)")
    pad = tok.token_to_id(PAD)
    if pad != 0:
        raise DataError(f"model: {folder}: the tokenizer's [PAD] id is {pad}, and tuner pads "
                        "with id 0; use a BERT-family model")
    return tok


def encode(tok: Tokenizer, texts: list[str], max_len: int, *, special: bool) -> Tensor:
    """(N, T) int64 ids, cut at ``max_len`` and padded with 0 to the longest (T <= max_len)."""
    tok.no_padding()
    tok.enable_truncation(max_len)
    ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=special)]
    longest = max(1, max(len(i) for i in ids))
    out = torch.zeros((len(ids), longest), dtype=torch.int64)
    for row, i in enumerate(ids):
        out[row, : len(i)] = torch.tensor(i, dtype=torch.int64)
    return out


# ---- the corpus behind a bundle ---------------------------------------------------------------
@dataclass(eq=False)
class TextCorpus:
    """Every text of a bundle's base tensor, in row order, with its classes and options;
    tokenizations cached by (vocab_size, max_len, training rows)."""

    texts: list[str]
    classes: list[str]
    options: TextOptions
    _tokenizers: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _encoded: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)

    def view(self, train_rows: Tensor, vocab_size: int, max_len: int) -> TextView:
        key = (vocab_size, hashlib.sha1(train_rows.cpu().numpy().tobytes()).hexdigest())
        if self.options.pretrained:
            key = ("pretrained",)
        tok = self._tokenizers.get(key)
        if tok is None:
            if self.options.pretrained:
                tok = pretrained_tokenizer(self.options.pretrained)
            else:
                rows = train_rows.tolist()
                tok = train_tokenizer([self.texts[i] for i in rows], self.options.tokenizer,
                                      vocab_size)
            self._tokenizers[key] = tok
        ekey = (*key, max_len)
        x = self._encoded.get(ekey)
        if x is None:
            x = encode(tok, self.texts, max_len, special=bool(self.options.pretrained))
            if len(self._encoded) >= CACHE_SIZE:
                self._encoded.pop(next(iter(self._encoded)))
            self._encoded[ekey] = x
        return TextView(self, tok, vocab_size, max_len, x)


@dataclass(frozen=True, eq=False)
class TextView:
    """One tokenization of a corpus: the tokenizer, what it was asked for, the ids."""

    corpus: TextCorpus
    tokenizer: Any
    requested_vocab: int
    max_len: int
    ids: Tensor  # (N, T) int64 on the CPU, the bundle's base rows

    @property
    def vocab_size(self) -> int:
        """Ids the model's embedding must hold."""
        return int(self.tokenizer.get_vocab_size())

    def save(self, folder: Path) -> dict[str, Any]:
        """Write the tokenizer into ``folder``; what the model card says about the text."""
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        return {"tokenizer": TOKENIZER_FILE, "max_len": int(self.ids.shape[1]),
                "vocab_size": self.vocab_size, "classes": list(self.corpus.classes),
                "special_tokens": bool(self.corpus.options.pretrained)}


def knob_values(view: TextView, params: dict[str, Any] | Any) -> tuple[int, int]:
    o = view.corpus.options
    return (int(params.get("vocab_size") or o.vocab_size) if not o.pretrained else 0,
            int(params.get("max_len") or o.max_len))


def for_params(bundle: DataBundle, params: Any) -> DataBundle:
    """``bundle`` tokenized for a trial's ``vocab_size`` and ``max_len`` (itself when they
    are the ones it has): the tokenizer trained on this bundle's training rows."""
    view = bundle.text
    if not isinstance(view, TextView):
        return bundle
    vocab, max_len = knob_values(view, params)
    train_rows = bundle.train.idx if bundle.train.idx is not None else torch.arange(len(bundle.train))
    fresh = view.corpus.view(train_rows.cpu(), vocab, max_len)
    if fresh.ids is view.ids:
        return bundle
    return retokenized(bundle, fresh)


def retokenized(bundle: DataBundle, view: TextView) -> DataBundle:
    """``bundle`` with its base ids replaced by ``view``'s (every split is a view of them)."""
    old = bundle.train.base_x
    new = view.ids.to(old.device)

    def swap(s: Split | None) -> Split | None:
        if s is None:
            return None
        if s.base_x is not old:
            raise DataError("text data: a split does not view the corpus; this is a bug")
        return Split(new, s.base_y, s.idx)

    return replace(bundle, train=swap(bundle.train), val=swap(bundle.val),
                   test=swap(bundle.test), input_shape=tuple(new.shape[1:]), text=view)


def load(options: TextOptions, request: Request) -> DataBundle:
    """The text file(s) -> a token bundle on the CPU (test apart, validation carved)."""
    texts, labels = read_rows(options.path, options, request.data_dir)
    classes = classes_of(labels, options.path)
    n_train = len(texts)
    if isinstance(options.test, str):
        test_texts, test_labels = read_rows(options.test, options, request.data_dir)
        unseen = sorted(set(test_labels) - set(classes))
        if unseen:
            raise DataError(f"data: {options.test}: label {unseen[0]!r} is not among the "
                            f"training labels ({', '.join(classes[:10])}); fix the test file")
        texts, labels = texts + test_texts, labels + test_labels
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[v] for v in labels], dtype=torch.int64)
    placeholder = torch.zeros((len(texts), 1), dtype=torch.int64)
    whole = Split(placeholder, y)
    if isinstance(options.test, str):
        train_part = whole.take(torch.arange(n_train))
        test = whole.take(torch.arange(n_train, len(texts)))
    else:
        if len(texts) < 3:
            raise DataError(f"data: {options.path} holds {len(texts)} rows; a test fraction, "
                            "a validation split and a training split need at least 3")
        # a fraction in (0, 1) of 3 rows or more holds out at least one and keeps one
        train_part, held_out = carve(whole, float(options.test), TEST_SEED)
        test = held_out if held_out is not None else whole.take(torch.arange(0))
    train, val = carve(train_part, request.validation, request.seed)
    bundle = make_bundle(NAME, "classification", train, val, test, len(classes),
                         InputKind.tokens)
    corpus = TextCorpus(texts, classes, options)
    view = corpus.view(train.idx if train.idx is not None else torch.arange(len(train)),
                       options.vocab_size, options.max_len)
    return retokenized(replace(bundle, text=view), view)
