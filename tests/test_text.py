"""Text data (tuner.data.text) and the transformer family (tuner.models.transformer): a
synthetic sentiment CSV tokenized offline, the transformer learning it end to end through
`tuner run` and `tuner retrain`, the card classifying new text, and bad input refused in
one line with nothing written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuner import data, models
from tuner.cli import app
from tuner.config import parse_spec
from tuner.data._text import TextCorpus, for_params
from tuner.data.text import TextOptions
from tuner.errors import DataError, SpecError
from tuner.kinds import InputKind, Inputs
from tuner.models._attention import TransformerNet

GOOD = ["great", "wonderful", "superb", "lovely", "brilliant", "moving"]
BAD = ["awful", "boring", "dull", "terrible", "clumsy", "tedious"]
FILL = ["the", "film", "plot", "was", "acting", "story", "a", "really", "and", "quite", "cast",
        "ending", "music", "director", "scenes"]


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentences of filler words with one sentiment word: the label is its side."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = rng.choices(FILL, k=rng.randint(3, 12))
        words.insert(rng.randrange(len(words) + 1), rng.choice(GOOD if positive else BAD))
        out.append((" ".join(words), "positive" if positive else "negative"))
    return out


def write_csv(path: Path, rows: list[tuple[str, str]], sep: str = ",") -> Path:
    lines = [f"review{sep}sentiment"] + [f"{t}{sep}{label}" for t, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(args: list[str]):  # noqa: ANN201
    return CliRunner().invoke(app, args)


# ---- the transformer family ----------------------------------------------------------------
@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padding_is_masked_whatever_the_options(pool: str, positions: str, norm: str) -> None:
    torch.manual_seed(0)
    p = {"d_model": 16, "heads": 2, "depth": 2, "vocab_size": 30, "pool": pool,
         "positions": positions, "norm": norm, "dropout": 0.0}
    net = models.build("transformer", p, Inputs(InputKind.tokens, (10,)), 3).eval()
    x = torch.randint(1, 30, (2, 6))
    padded = torch.cat([x, torch.zeros(2, 4, dtype=torch.int64)], dim=1)
    # the same texts padded further give the same logits: padded steps are never attended to
    assert torch.allclose(net(x), net(padded), atol=1e-5)


def test_float_sequences_and_the_fused_attention_path() -> None:
    net = models.build("transformer", {"d_model": 8, "heads": 2, "pool": "mean"},
                       Inputs(InputKind.sequence, (12, 3)), 2).eval()
    x = torch.randn(3, 12, 3)
    x[0, 5:] = 0  # a shorter sample, padded with zeros as normalised batches are
    assert net(x).shape == (3, 2)
    assert torch.allclose(net(x[:1, :5]), net(x[:1]), atol=1e-5)
    assert all(isinstance(m, torch.nn.TransformerEncoderLayer) for m in net.layers)


def test_heads_must_divide_d_model_at_check_or_be_drawn_as_one_choice(tmp_path: Path) -> None:
    base = {"data": "uea:GunPoint", "model": "transformer"}
    with pytest.raises(SpecError, match="heads 3 cannot divide d_model 64"):
        parse_spec({**base, "space": {"d_model": [64, 96], "heads": [2, 3]}})
    with pytest.raises(SpecError, match="draw the pair as one choice"):
        parse_spec({**base, "space": {"d_model": {"type": "int", "low": 32, "high": 128},
                                      "heads": [2, 4]}})
    with pytest.raises(SpecError, match="3 heads cannot divide d_model 64"):
        parse_spec({**base, "space": {"shape": ["64x3"]}})
    parse_spec({**base, "space": {"d_model": [64, 96], "heads": [2, 4]}})
    spec = parse_spec({**base, "space": {"shape": ["64x4", "96x3"]}})
    assert spec.space["shape"].choices == ["64x4", "96x3"]
    net = TransformerNet({**{k: v.default for k, v in models.get("transformer").knobs.items()},
                          "shape": "96x3"}, Inputs(InputKind.sequence, (5, 1)), 2)
    assert net.layers[0].self_attn.num_heads == 3 and net.head.in_features == 96
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndata: uea:GunPoint\nmodel: transformer\n"
                     "space: {d_model: 100, heads: [3, 4]}\n")
    r = run(["check", str(study)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "heads 3 cannot divide d_model 100" in r.output


def test_warmup_and_cosine_apply_to_the_transformer() -> None:
    from tuner.data._bundle import Split, carve, make_bundle
    from tuner.training.context import Context
    from tuner.training.train import fit

    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 12, (200, 8), generator=g)
    y = (x == 5).any(1).long()
    train, val = carve(Split(x, y), 0.25, 0)
    b = make_bundle("tok", "classification", train, val, None, 2, InputKind.tokens)
    p = {"vocab_size": 12, "d_model": 16, "heads": 2, "depth": 1, "lr": 0.01,
         "warmup_epochs": 2, "schedule": "cosine", "batch_size": 32}
    ctx = Context(device=torch.device("cpu"), seed=0, max_epochs=6, task="classification",
                  metric="accuracy", data=b,
                  build_model=lambda q: models.build("transformer", q, b.inputs, 2))
    fit(p, ctx)
    lrs = [h["lr"] for h in ctx.history]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.01)  # warm-up, then the cosine
    assert lrs[3] > lrs[4] > lrs[5]
    assert ctx.history[-1]["value"] > 0.8, ctx.history


# ---- text data ---------------------------------------------------------------------------------
def test_text_csv_tokenizes_on_the_training_split_only(tmp_path: Path) -> None:
    rows = reviews(200, 0)
    rows[0] = ("zyzzyva only in the test set", "positive")
    write_csv(tmp_path / "train.csv", rows[1:])
    write_csv(tmp_path / "test.csv", rows[:1])
    options = TextOptions.of({"name": "text", "path": "train.csv", "test": "test.csv",
                              "text": "review", "label": "sentiment", "vocab_size": 100,
                              "max_len": 8}, str(tmp_path))
    b = data.load("text", data.Request(validation=0.2, seed=0, options=options))
    assert b.kind == InputKind.tokens and b.num_outputs == 2
    assert (len(b.train), len(b.val), len(b.test)) == (159, 40, 1)
    assert b.input_shape[0] <= 8 and int(b.train.x.max()) < b.text.vocab_size
    assert b.text.corpus.classes == ["negative", "positive"]
    # a word only the test set has is unknown to the tokenizer trained on train
    assert "zyzzyva" not in b.text.tokenizer.get_vocab()
    # another max_len or vocab_size is another tokenization of the same rows
    short = for_params(b, {"max_len": 4, "vocab_size": 60})
    assert short.input_shape == (4,) and short.text.vocab_size <= 60
    assert torch.equal(short.train.idx, b.train.idx) and torch.equal(short.val.y, b.val.y)
    assert for_params(b, {}) is b


@pytest.mark.parametrize("tokenizer", ["wordpiece", "bpe"])
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_formats_and_tokenizers(tmp_path: Path, fmt: str, tokenizer: str) -> None:
    rows = reviews(60, 1)
    path = tmp_path / f"r.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"t": t, "y": int(lab == "positive")}) + "\n"
                                for t, lab in rows))
    else:
        lines = ["t\ty" if fmt == "tsv" else "t,y"] + [
            f"{t}\t{int(lab == 'positive')}" if fmt == "tsv" else f"{t},{int(lab == 'positive')}"
            for t, lab in rows]
        path.write_text("\n".join(lines) + "\n")
    options = TextOptions.of({"path": path.name, "text": "t", "label": "y", "test": 0.25,
                              "tokenizer": tokenizer, "vocab_size": 80}, str(tmp_path))
    b = data.load("text", data.Request(validation=0.2, seed=0, options=options))
    assert len(b.test) == 15 and b.text.corpus.classes == ["0", "1"]
    assert int(b.train.base_x.max()) < b.text.vocab_size


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda rows: rows, "no such file"),
    (lambda rows: [("", "positive")] + rows, "row 2: the 'review' text is empty"),
    (lambda rows: [(t, "0.5") for t, _ in rows], "label '0.5' is a number but not a class"),
    (lambda rows: [(t, "positive") for t, _ in rows], "at least two classes"),
    (lambda rows: rows, "no column 'review'"),
])
def test_bad_text_is_one_line_exit_2_and_nothing_written(tmp_path: Path, mutate, message) -> None:  # noqa: ANN001
    path = tmp_path / "r.csv"
    if message == "no column 'review'":
        path.write_text("text,sentiment\nfine film,positive\nawful,negative\n")
    elif message != "no such file":
        write_csv(path, mutate(reviews(30, 2)))
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndata: {name: text, path: r.csv, text: review, label: sentiment}\n"
                     "model: transformer\nepochs: 1\ntrials: 1\n")
    db = tmp_path / "t.db"
    r = run(["run", str(study), "--device", "cpu", "--storage", f"sqlite:///{db}",
             "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "ck").exists()
    if db.exists():  # the storage is opened first (a wrong URL fails fast); no study in it
        import optuna

        assert optuna.get_all_study_names(f"sqlite:///{db}") == []


def test_augment_on_text_and_unknown_keys_are_refused_at_check(tmp_path: Path) -> None:
    write_csv(tmp_path / "r.csv", reviews(20, 3))
    block = "data: {name: text, path: r.csv, text: review, label: sentiment}\n"
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\n{block}model: transformer\nspace: {{augment_flip: [true, false]}}\n")
    r = run(["check", str(study)])
    assert r.exit_code == 2 and "augmentation works on images only" in r.output, r.output
    study.write_text("name: s\ndata: {name: text, path: r.csv, colum: review}\n")
    r = run(["check", str(study)])
    assert r.exit_code == 2 and "unknown key 'colum'" in r.output, r.output


@pytest.mark.slow
def test_transformer_tunes_and_retrains_on_text_and_the_card_classifies(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", reviews(400, 4))
    write_csv(tmp_path / "test.csv", reviews(100, 5))
    study = tmp_path / "s.yaml"
    study.write_text(
        "name: txt\ndata: {name: text, path: train.csv, test: test.csv, text: review, "
        "label: sentiment, vocab_size: 200, max_len: 16}\nmodel: transformer\nepochs: 6\n"
        "trials: 2\nsampler: random\npruner: none\n"
        "space:\n  d_model: 32\n  heads: 2\n  depth: 1\n  lr: 0.003\n  batch_size: 32\n"
        "  warmup_epochs: 1\n  schedule: cosine\n  max_len: [12, 16]\n"
        "  vocab_size: [100, 200]\n")
    db = f"sqlite:///{tmp_path / 't.db'}"
    r = run(["run", str(study), "--device", "cpu", "--storage", db,
             "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "model"
    r = run(["retrain", "txt", "--storage", db, "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    card = json.loads((out / "model.json").read_text())
    assert card["test_metrics"]["accuracy"] > 0.9, card["test_metrics"]
    assert card["files"]["tokenizer"] == "tokenizer.json" and (out / "tokenizer.json").is_file()
    assert card["text"]["classes"] == ["negative", "positive"]
    from tuner.results.retrain import classify_text

    labels = classify_text(out, ["the plot was superb and lovely", "a dull and tedious film"])
    assert labels == ["positive", "negative"]


def test_a_corpus_caches_its_tokenizations() -> None:
    rows = reviews(50, 6)
    corpus = TextCorpus([t for t, _ in rows], ["negative", "positive"],
                        TextOptions(path="x.csv", vocab_size=50, max_len=8))
    rows_ = torch.arange(40)
    a = corpus.view(rows_, 50, 8)
    assert corpus.view(rows_, 50, 8).ids is a.ids
    assert corpus.view(rows_, 50, 6).ids.shape[1] <= 6
    with pytest.raises(DataError):
        from tuner.data._text import classes_of

        classes_of(["1.5", "2.5"], "x.csv")
