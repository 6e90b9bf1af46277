"""The benchmark scripts run end to end on tiny data (no timing is checked here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str) -> ModuleType:
    """Import ``benchmarks/NAME.py`` as its command line would (its folder on sys.path)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_handwritten_split_is_tuners(mnist_dir: Path) -> None:
    """Both pipelines validate on the same held-out images."""
    from tuner.data import load_builtin

    common = _script("_common")
    bundle = load_builtin("mnist", mnist_dir, validation=0.1, seed=3, download=False)
    import torchvision

    raw = torchvision.datasets.MNIST(mnist_dir, train=True, download=False)
    train_idx, val_idx = common._split_indices(len(raw), 0.1, 3)
    assert torch.equal(raw.data[val_idx].unsqueeze(1), bundle.val.x)
    assert torch.equal(raw.data[train_idx].unsqueeze(1), bundle.train.x)


def test_table_aligns() -> None:
    common = _script("_common")
    text = common.table(["a", "bb"], [["x", 1.5], ["yyy", None]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[-1] == "| yyy |   - |"


def test_study(mnist_dir: Path) -> None:
    out = _script("study").main(["--trials", "2", "--epochs", "1", "--device", "cpu",
                                 "--num-workers", "0", "--data-dir", str(mnist_dir)])
    assert "| tuner " in out and "| hand-written (0 loader workers) " in out
    assert "median wall time" in out


def _rows(out: str) -> dict[str, list[str]]:
    """A printed table's rows by their first cell (the header row included)."""
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
             if line.startswith("| ")]
    return {row[0]: row for row in cells}


def test_pruning(mnist_dir: Path) -> None:
    argv = ["--configs", "3", "--epochs", "2", "--min-epochs", "1", "--median-startup", "1",
            "--device", "cpu", "--data-dir", str(mnist_dir)]
    real, replay = _script("pruning").main(argv), _script("pruning").main([*argv, "--replay"])
    rows, replayed = _rows(real), _rows(replay)
    head = rows["pruner"]
    decided = [head.index(k) for k in ("epochs", "complete", "pruned", "best accuracy")]
    for name in ("none", "median", "successive_halving", "hyperband"):
        # the trials that survive a pruner reproduce their unpruned accuracy exactly ...
        assert rows[name][head.index("same")] == "yes"
        # ... so replaying the recorded curves makes the decisions training makes
        assert [rows[name][i] for i in decided] == [replayed[name][i] for i in decided]


def _packing(mnist_dir: Path, workers: list[str]) -> list[list[str]]:
    out = _script("packing").main(["--device", "cpu", "--workers", *workers, "--trials", "2",
                                   "--epochs", "1", "--data-dir", str(mnist_dir)])
    assert "smoke test" in out
    cells = [line.split("|") for line in out.splitlines() if line.startswith("| ")]
    return [line for line in cells[1:] if line[1].strip() in workers]  # rows after the header


def test_packing_on_cpu(mnist_dir: Path) -> None:
    (row,) = _packing(mnist_dir, ["1"])
    assert row[2].strip() == "2"  # both trials finished


@pytest.mark.slow
def test_packing_spawns_workers(mnist_dir: Path) -> None:
    # two workers in one run (one worker's row is test_packing_on_cpu's)
    rows = _packing(mnist_dir, ["2"])
    assert [r[2].strip() for r in rows] == ["2"]


@pytest.mark.parametrize("name", ["study", "pruning", "packing", "asha", "schedules", "text"])
def test_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _script(name).main(["--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_stopping_replay_stops_where_patience_would() -> None:
    """benchmarks/stopping.py replays a rule on finished trials in finishing order."""
    import datetime as dt

    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from tuner.config import parse_spec

    bench = _script("stopping")
    spec = parse_spec({"name": "p", "data": "digits"})  # accuracy: maximize
    ts = []
    for i, v in enumerate([0.5, 0.9, 0.8, 0.7, 0.6, 0.95]):
        t = create_trial(params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)}, value=v)
        t.number, t.datetime_complete = i, dt.datetime(2026, 1, 1, 0, i)
        ts.append(t)
    assert bench.replay(spec, ts, "patience=3") == 5  # trial 1 is best, 3 more: stop
    assert bench.replay(spec, ts, "patience=4") == 6  # never fires: the whole budget


def test_augment_benchmark_runs() -> None:
    import argparse

    rows = _script("augment").run(argparse.Namespace(n=64, epochs=1, batch_size=32,
                                                     device="cpu"))
    assert [r[0] for r in rows] == ["none", "crop 4", "crop 4 + flip", "crop 4 + flip + cutout 8"]


def test_sequences_tuned_runs_a_study_retrains_and_sets_rocket_beside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--tuned: the set's study through the API on SQLite, its best trial retrained and tested,
    Rocket on the same test split; a shrunk copy of the shipped study keeps it short."""
    import argparse

    import yaml

    bench = _script("sequences")
    raw = yaml.safe_load((BENCHMARKS.parent / "search_spaces" / "basic_motions_cnn1d.yaml")
                         .read_text())
    raw.update(trials=2, epochs=2, validation={"kfold": 2})
    raw["space"].update(channels=8, depth=1)
    study = tmp_path / "bm.yaml"
    study.write_text(yaml.safe_dump(raw))
    monkeypatch.setitem(bench.STUDIES, "BasicMotions", str(study))  # an absolute path wins
    args = argparse.Namespace(sets=["BasicMotions"], seeds=[0], kernels=100, device="cpu",
                              data_dir=str(tmp_path))
    per_seed, summary = bench.uea_tuned(args)
    assert per_seed[0][2].startswith("tuner bm (val ") and per_seed[1][2] == "aeon Rocket (100 kernels)"
    assert all(0 <= r[3] <= 1 and r[4] > 0 for r in per_seed)
    assert "channels=8" in per_seed[0][5]
    assert [r[1] for r in summary] == ["tuner bm", "aeon Rocket (100 kernels)"]
    assert [r[2] for r in summary] == [r[3] for r in per_seed]  # one seed: the median is it


def test_schedules_runs_a_study_file_under_each_schedule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--study: the file's space and budget, its pruner replaced by each schedule's; every
    run reports how long it took to each target (a digits MLP reaches 30% in two epochs)."""
    study = tmp_path / "digits.yaml"
    study.write_text(
        "name: digits\ndata: digits\nmodel: mlp\nepochs: 2\ntrials: 3\nvalidation: 0.2\n"
        "pruner: {name: median}\n"
        "space:\n  lr: {type: float, low: 3.0e-3, high: 1.0e-2, log: true}\n"
        "  width: 32\n  batch_size: 64\n")
    _script("schedules").main(["--study", str(study), "--sampler", "random", "--seeds", "1",
                               "--target", "0.3", "--only", "median", "asha", "pbt"])
    out = capsys.readouterr().out
    assert "3 trials of at most 2 epochs, sampler random" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ") and "schedule" not in line}
    assert set(rows) == {"median", "asha", "pbt"}
    for line in rows.values():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1] == "1/1"  # reached 0.3
        assert float(cells[2]) >= 0  # seconds to it
        assert int(cells[4].split()[0]) >= 1 and float(cells[5]) >= 1  # epochs to it, run


def test_text_benchmark_scores_the_classic_baselines(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_text import reviews

    folder = tmp_path / "rt_polarity"
    folder.mkdir()
    for name, n, seed in (("train.csv", 200, 0), ("test.csv", 60, 1)):
        rows = ["text,label"] + [f"{t},{int(lab == 'positive')}" for t, lab in reviews(n, seed)]
        (folder / name).write_text("\n".join(rows) + "\n")
    _script("text").main(["--data-dir", str(tmp_path), "--models", "classic", "--seeds", "0",
                          "--ft-train", "0"])
    out = capsys.readouterr().out
    medians = out[out.index("medians over seeds"):]
    for name in ("tf-idf + logistic regression", "tf-idf + linear SVM"):
        row = next(line for line in medians.splitlines() if name in line)
        assert float(row.split("|")[2]) > 0.9, out  # the sentiment word decides the label
