"""Sequence data and the sequence families: padding masks, rnn/cnn1d learning on tiny
generated sequences, MNIST read row by row, the offline UEA sets, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuner import data, vocab
from tuner.cli import app
from tuner.config import parse_spec
from tuner.data import DataBundle
from tuner.data._bundle import Split, carve, make_bundle
from tuner.errors import SpecError
from tuner.kinds import InputKind, Inputs
from tuner.models import build
from tuner.models._recurrent import lengths_of, pool
from tuner.training.context import Context
from tuner.training.train import fit

CPU = torch.device("cpu")
ROOT = Path(__file__).parent.parent


def _sequences(n: int, seed: int, *, padded: bool) -> Split:
    """Class = sign of the sum of feature 0 over a sample's (1..12, or all 12) real steps;
    padded steps are NaN as the UEA loader stores them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, 3, generator=g)
    lengths = torch.randint(4, 13, (n,), generator=g) if padded else torch.full((n,), 12)
    y = torch.zeros(n, dtype=torch.int64)
    for i, length in enumerate(lengths.tolist()):
        x[i, length:] = math.nan
        y[i] = int(x[i, :length, 0].sum() > 0)
    return Split(x, y)


def _bundle(padded: bool) -> DataBundle:
    train, val = carve(_sequences(600, 0, padded=padded), 0.2, 0)
    return make_bundle("seq", "classification", train, val, _sequences(200, 1, padded=padded),
                       2, InputKind.sequence)


def _fit(bundle: DataBundle, family: str, params: dict, epochs: int = 8) -> tuple[float, Context]:
    ctx = Context(device=CPU, seed=0, max_epochs=epochs, data=bundle,
                  build_model=lambda p: build(family, p, bundle.inputs, bundle.num_outputs))
    return fit({"lr": 1e-2, "batch_size": 32, **params}, ctx), ctx


def test_padding_is_nan_in_store_zero_in_batches_and_stats_skip_it() -> None:
    b = _bundle(padded=True)
    real = b.train.x[~b.train.x.isnan().any(-1)]  # (steps, F) of real steps only
    assert torch.allclose(b.mean.flatten(), real.mean(0), atol=1e-5)
    x, _ = next(b.batches("train", 64, shuffle=False))
    pads = b.train.x[:64].isnan().any(-1)
    assert not x.isnan().any() and bool((x[pads] == 0).all())
    assert torch.equal(lengths_of(x, tokens=False), (~pads).sum(1))


@pytest.mark.parametrize("how", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_a_samples_output(how: str, bidirectional: bool) -> None:
    """The same sample with or without trailing padding gets the same logits."""
    torch.manual_seed(0)
    model = build("rnn", {"cell": "gru", "pool": how, "bidirectional": bidirectional,
                          "depth": 2}, Inputs(InputKind.sequence, (9, 3)), 4).eval()
    x = torch.randn(1, 5, 3)
    padded = torch.cat([x, torch.zeros(1, 4, 3)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded), atol=1e-5)
    assert pool(torch.arange(6.0).view(1, 3, 2), torch.tensor([2]), how).tolist() == \
        {"last": [[2.0, 3.0]], "mean": [[1.0, 2.0]], "max": [[2.0, 3.0]]}[how]


def test_rnn_cells_widths_and_init() -> None:
    inputs = Inputs(InputKind.sequence, (7, 5))
    for cell in ("rnn", "lstm", "gru"):
        m = build("rnn", {"cell": cell, "depth": 2, "width_0": 8, "width_1": 6,
                          "bidirectional": True, "proj": 4}, inputs, 3)
        assert m(torch.randn(2, 7, 5)).shape == (2, 3)
        assert [layer.hidden_size for layer in m.layers] == [8, 6]
    lstm = build("rnn", {"cell": "lstm", "width": 8}, inputs, 3).layers[0]
    assert torch.equal(lstm.bias_ih_l0[8:16], torch.ones(8))  # forget gate
    w = lstm.weight_hh_l0[:8]
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)  # orthogonal per gate
    assert build("rnn", {}, inputs, 3).default_clip_norm == 1.0


@pytest.mark.parametrize(("family", "params"), [
    ("rnn", {"cell": "lstm", "width": 32}),
    ("rnn", {"cell": "gru", "width": 32, "bidirectional": True, "pool": "mean"}),
    ("cnn1d", {"channels": 16, "depth": 2, "dilation": 2}),
    ("cnn1d", {"channels_0": 8, "channels_1": 16, "depth": 2, "residual": True,
               "kernel_size_0": 7, "kernel_size_1": 3}),
])
def test_sequence_families_learn_variable_length_data(family: str, params: dict) -> None:
    value, ctx = _fit(_bundle(padded=True), family, params)
    assert value > 0.85, ctx.history


def test_tokens_rnn_learns_and_ids_past_the_vocabulary_are_refused(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 20, (400, 10), generator=g)
    x[:, 7:] = 0  # padding id
    y = (x[:, :7] == 3).any(1).long()  # does token 3 appear?
    train, val = carve(Split(x, y), 0.25, 0)
    b = make_bundle("tok", "classification", train, val, None, 2, InputKind.tokens)
    value, ctx = _fit(b, "rnn", {"vocab_size": 20, "embedding": 16, "width": 32}, epochs=10)
    assert value > 0.9, ctx.history
    loader = tmp_path / "toks.py"
    loader.write_text("import torch\ndef load():\n    x = torch.randint(1, 50, (40, 6))\n"
                      "    return (x, torch.arange(40) % 2), (x, torch.arange(40) % 2)\n")
    study = tmp_path / "s.yaml"
    study.write_text("name: t\ndata: {name: toks.py:load, as: tokens}\nmodel: rnn\n"
                     "space: {vocab_size: 10}\n")
    r = CliRunner().invoke(app, ["run", str(study), "--device", "cpu", "--storage",
                                 f"sqlite:///{tmp_path / 't.db'}"])
    assert r.exit_code == 2 and "set vocab_size: 50" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "t.db").exists() or "trial" not in r.output


def test_mnist_read_as_sequence_is_rows_of_pixels(mnist_dir: Path) -> None:
    img = data.load("mnist", data.Request(str(mnist_dir), 0.1, 0, False))
    seq = data.load("mnist", data.Request(str(mnist_dir), 0.1, 0, False, InputKind.sequence))
    assert seq.kind == InputKind.sequence and seq.input_shape == (28, 28)
    assert torch.equal(seq.train.x[3], img.train.x[3, 0].float() / 255)
    assert seq.mean.shape == (1, 1, 28)  # per pixel column, over all rows
    spec = parse_spec({"data": {"name": "mnist", "as": "sequence"}, "model": "rnn"})
    assert spec.data_kind == InputKind.sequence


def test_uea_sets_load_offline_with_official_splits() -> None:
    jv = data.load("uea:JapaneseVowels", data.Request(validation=0.2, seed=0))
    assert (len(jv.train) + len(jv.val), len(jv.test)) == (270, 370)
    assert jv.input_shape == (29, 12) and jv.num_outputs == 9
    lengths = (~jv.test.x.isnan().any(-1)).sum(1)
    assert (int(lengths.min()), int(lengths.max())) == (7, 29)
    assert data.get("uea:BasicMotions").kind == InputKind.sequence


@pytest.mark.parametrize(("raw", "message"), [
    ({"data": "mnist", "model": "rnn"}, "as: sequence}"),
    ({"data": "uea:JapaneseVowel"}, "did you mean 'JapaneseVowels'?"),
    ({"data": "uea:Nope"}, "the sets available offline are uea:ACSF1"),
    ({"data": {"name": "moons", "as": "sequence"}}, "cannot be read as sequence"),
    ({"data": "uea:GunPoint", "model": "cnn1d", "space": {"augment_crop": 4}},
     "augmentation works on images only"),
    ({"data": "digits", "model": "cnn1d"}, "pick a model for tabular data"),
])
def test_bad_sequence_studies_are_one_line(raw: dict, message: str) -> None:
    with pytest.raises(SpecError, match=None) as e:
        parse_spec(raw)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("name", "family"), [
    ("smnist_lstm.yaml", "rnn"), ("japanese_vowels_gru.yaml", "rnn"),
    ("basic_motions_cnn1d.yaml", "cnn1d"), ("italy_power_cnn1d.yaml", "cnn1d"),
    ("gunpoint_cnn1d.yaml", "cnn1d"),
])
def test_sequence_study_files_validate(name: str, family: str) -> None:
    from tuner.config import load_spec

    spec = load_spec(ROOT / "search_spaces" / name)
    assert spec.model == family and spec.data_kind == InputKind.sequence
    assert set(spec.space) <= set(spec.knobs()) | set(vocab.TRAINING_KNOBS)


def test_cnn1d_residual_blocks_and_per_block_kernels() -> None:
    from tuner.models._conv1d import Residual1d

    inputs = Inputs(InputKind.sequence, (20, 3))
    m = build("cnn1d", {"depth": 3, "channels_0": 8, "channels_1": 8, "channels_2": 16,
                        "kernel_size_0": 8, "kernel_size_1": 5, "kernel_size_2": 3,
                        "residual": True, "dropout": 0.1}, inputs, 4)
    res = list(m.body)
    assert all(isinstance(b, Residual1d) for b in res)
    convs = [[c.kernel_size[0] for c in b.body if isinstance(c, torch.nn.Conv1d)] for b in res]
    assert convs == [[8, 8], [5, 5], [3, 3]]
    # a shortcut convolution only where the width changes (3 -> 8, 8 -> 16)
    assert [isinstance(b.shortcut, torch.nn.Identity) for b in res] == [False, True, False]
    assert m(torch.randn(2, 20, 3)).shape == (2, 4)
    plain = build("cnn1d", {"depth": 2, "kernel_size_0": 8, "kernel_size_1": 3}, inputs, 4)
    assert [c.kernel_size[0] for c in plain.body if isinstance(c, torch.nn.Conv1d)] == [8, 3]
