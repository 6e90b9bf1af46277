"""``model: hf:PATH``: fine-tuning a pretrained encoder offline, on a tiny randomly
initialised BERT (2 layers, hidden 32) and a tiny WordPiece tokenizer saved in a temporary
folder; a folder without weights or tokenizer is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.test_text import reviews, write_csv
from tuner import models
from tuner.cli import app
from tuner.config import parse_spec
from tuner.errors import SpecError
from tuner.kinds import InputKind, Inputs
from tuner.training import transfer


def tiny_bert(folder: Path) -> Path:
    """A BERT of 2 layers, hidden 32, with a WordPiece vocabulary of the test's words."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import models as tm
    from transformers import BertConfig, BertModel

    tok = Tokenizer(tm.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator([t for t, _ in reviews(300, 9)],
                            trainers.WordPieceTrainer(vocab_size=120, special_tokens=special,
                                                      show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "tiny")


def test_encoder_blocks_freeze_and_layerwise_decay(bert: Path) -> None:
    net = models.build(f"hf:{bert}", {"pool": "mean"}, Inputs(InputKind.tokens, (12,)), 3)
    x = torch.tensor([[2, 10, 11, 3, 0, 0], [2, 12, 3, 0, 0, 0]])
    assert net(x).shape == (2, 3)
    # padding is masked: more padding, same logits (eval: no dropout)
    net.eval()
    assert torch.allclose(net(x), net(torch.cat([x, torch.zeros(2, 3, dtype=torch.int64)], 1)),
                          atol=1e-5)
    blocks = transfer.blocks(net)
    assert len(blocks) == 4  # embeddings, 2 layers, head
    assert all(".layer.0." in n for n in blocks[1]) and blocks[-1] == ["head.weight", "head.bias"]
    transfer.freeze(net, 2)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == set(blocks[0]) | set(blocks[1])
    groups = transfer.param_groups(net, 1e-3, 1.0, 0.5)
    assert sorted(g["lr"] for g in groups) == pytest.approx([5e-4, 1e-3])  # layer 1, head


def test_a_folder_without_weights_or_tokenizer_is_one_line(tmp_path: Path, bert: Path) -> None:
    write_csv(tmp_path / "r.csv", reviews(20, 1))
    for missing, word in (("tokenizer.json", "tokenizer"), ("model.safetensors", "weights")):
        folder = tmp_path / f"no-{word}"
        folder.mkdir()
        for f in bert.iterdir():
            if f.name != missing:
                (folder / f.name).write_bytes(f.read_bytes())
        study = tmp_path / "s.yaml"
        study.write_text(f"name: s\ndata: {{name: text, path: r.csv, text: review, label: "
                         f"sentiment}}\nmodel: hf:{folder.name}\n")
        r = CliRunner().invoke(app, ["check", str(study)])
        assert r.exit_code == 2 and f"holds no {word}" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    with pytest.raises(SpecError, match="brings its own tokenizer"):
        parse_spec({"data": {"name": "text", "path": "r.csv"}, "model": f"hf:{bert}",
                    "space": {"vocab_size": 100}}, base_dir=str(tmp_path))
    with pytest.raises(SpecError, match="no folder at"):
        parse_spec({"data": {"name": "text", "path": "r.csv"}, "model": "hf:nowhere_at_all"},
                   base_dir=str(tmp_path))


@pytest.mark.slow
def test_fine_tuning_runs_offline_and_retrains_with_its_tokenizer(tmp_path: Path,
                                                                  bert: Path) -> None:
    write_csv(tmp_path / "train.csv", reviews(400, 4))
    write_csv(tmp_path / "test.csv", reviews(60, 5))
    study = tmp_path / "s.yaml"
    study.write_text(
        f"name: ft\ndata: {{name: text, path: train.csv, test: test.csv, text: review, "
        f"label: sentiment, max_len: 16}}\nmodel: hf:{bert}\nepochs: 6\ntrials: 1\n"
        "space:\n  optimizer: adamw\n  lr: 0.003\n  batch_size: 16\n  warmup_epochs: 1\n"
        "  schedule: cosine\n  freeze: 0\n  layer_lr_decay: 0.9\n  weight_decay: 0.01\n"
        "  dropout: 0.0\n  pool: mean\n")
    db = f"sqlite:///{tmp_path / 't.db'}"
    r = CliRunner().invoke(app, ["run", str(study), "--device", "cpu", "--storage", db,
                                 "--checkpoint-dir", str(tmp_path / "ck")],
                           env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 0, r.output
    out = tmp_path / "m"
    r = CliRunner().invoke(app, ["retrain", "ft", "--storage", db, "--device", "cpu",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    card = json.loads((out / "model.json").read_text())
    assert card["test_metrics"]["accuracy"] > 0.8, card
    assert card["text"]["special_tokens"] is True
    from tuner.results.retrain import classify_text

    assert classify_text(out, ["superb and lovely", "dull, tedious"]) == ["positive", "negative"]
