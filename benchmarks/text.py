"""Text classification on rt_polarity (movie-review sentences, fresh or rotten): test
accuracy of ``tuner retrain`` for a tuned LSTM, a tuned Transformer trained from scratch and a
tuned fine-tuning of all-MiniLM-L6-v2, beside TF-IDF (word 1-2-grams) with logistic
regression and with a linear SVM, C chosen by 5-fold CV on the training file (scikit-learn).
Studies choose on a validation split of ``train.csv`` only; ``test.csv`` is scored once.

    python benchmarks/text.py [--seeds 0 1 2] [--models lstm transformer minilm classic]
        [--trials 3] [--epochs 3] [--ft-train 1500] [--ft-trials 2] [--ft-epochs 2]

The studies are the files of ``search_spaces/`` (``rt_polarity_lstm``,
``rt_polarity_transformer``, ``rt_polarity_minilm``) shrunk to ``--trials`` x ``--epochs``
(``--ft-*`` for the fine-tuning) so that the whole run fits a small CPU budget; the
fine-tuning study sees a seeded subsample of ``--ft-train`` sentences of ``train.csv`` (0: all
of it); its best trial is retrained on the whole ``train.csv`` (``--no-ft-retrain-full``: on
the subsample) and tested on the whole ``test.csv``. Each study runs
through ``tuner.api`` on a fresh SQLite file, then ``api.retrain`` retrains its best trial on
train+validation and tests it once. Printed: per seed, then medians and ranges; the
fine-tuning's seconds per epoch (its trials' wall time over their epochs, validation pass
included); the machine and its load. The time-series Transformer
(``search_spaces/japanese_vowels_transformer.yaml``) runs through ``benchmarks/sequences.py
--tuned`` like the GRU and the cnn1d studies.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from _common import (
    DEFAULT_DATA_DIR,
    REPO,
    LoadMonitor,
    bench_spec,
    cpu_seconds,
    load_average,
    machine,
    quiet_libraries,
    table,
)

from tuner import api

STUDIES = {"lstm": "rt_polarity_lstm.yaml", "transformer": "rt_polarity_transformer.yaml",
           "minilm": "rt_polarity_minilm.yaml"}
# the spaces narrowed to what a few trials on a shared CPU can afford (said in BENCHMARKS.md)
NARROW = {
    "transformer": {"shape": {"type": "categorical", "choices": ["64x2", "64x4"]},
                    "depth": {"type": "int", "low": 1, "high": 2}},
    "minilm": {"freeze": {"type": "categorical", "choices": [1, 3]}},
}
# the fine-tuning's max_len here (the study file's is 48): a shared CPU's budget
FT_MAX_LEN = 32


def read_csv(path: Path) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def classic(folder: Path, seed: int) -> dict[str, tuple[float, float, float]]:
    """TF-IDF word 1-2-grams + logistic regression / linear SVM, C by 5-fold CV on the
    training file: {name: (test accuracy, chosen C, seconds)}."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    xtr, ytr = read_csv(folder / "train.csv")
    xte, yte = read_csv(folder / "test.csv")
    out = {}
    for name, clf in (("tf-idf + logistic regression", LogisticRegression(max_iter=2000)),
                      ("tf-idf + linear SVM", LinearSVC())):
        t = time.perf_counter()
        pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), clf)
        key = f"{pipe.steps[-1][0]}__C"
        cv = StratifiedKFold(5, shuffle=True, random_state=seed)
        grid = GridSearchCV(pipe, {key: [0.1, 0.3, 1.0, 3.0, 10.0]}, cv=cv, n_jobs=1)
        grid.fit(xtr, ytr)
        acc = float((grid.predict(xte) == yte).mean())
        out[name] = (acc, grid.best_params_[key], time.perf_counter() - t)
    return out


def subsample(folder: Path, n: int, into: Path) -> Path:
    """A seeded subsample of ``n`` rows of train.csv (seed 0: the same for every seed)."""
    with (folder / "train.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = random.Random(0).sample(rows, n)
    into.mkdir(parents=True, exist_ok=True)
    path = into / f"train-{n}.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def tuned(model: str, seed: int, args: argparse.Namespace, tmp: Path,
          train: Path | None) -> dict[str, object]:
    """The model's study shrunk, run, its best trial retrained and tested once."""
    ft = model == "minilm"
    path = REPO / "search_spaces" / STUDIES[model]
    raw = bench_spec(path).model_dump(mode="json")
    options = dict(raw["data_options"])
    folder = Path(args.data_dir).resolve() / "rt_polarity"
    options.update(path=str(train or folder / "train.csv"), test=str(folder / "test.csv"))
    if ft:
        options["max_len"] = args.ft_max_len
    space = {**raw["space"], **NARROW.get(model, {})}
    if ft and args.ft_freeze:
        space["freeze"] = {"type": "categorical", "choices": args.ft_freeze}
    spec = bench_spec(path, data={"name": "text", **{k: v for k, v in options.items()
                                                      if k != "name"}},
                      data_options=None, space=space,
                      trials=args.ft_trials if ft else args.trials,
                      epochs=args.ft_epochs if ft else args.epochs)
    where = tmp / f"{model}-{seed}"
    opts = {"storage": f"sqlite:///{where}.db", "device": "cpu", "data_dir": args.data_dir,
            "checkpoint_dir": str(where / "ckpt")}
    t, cpu = time.perf_counter(), cpu_seconds()
    result = api.run(spec, seed=seed, **opts)
    study_s = time.perf_counter() - t
    trials = api.trials(result.name, storage=opts["storage"])
    if train is not None and args.ft_retrain_full:
        # tuned on a subsample, retrained on all of train.csv: the study's data file (read
        # again by retrain, which re-tokenizes it) becomes the whole training file
        train.write_bytes((folder / "train.csv").read_bytes())
    done = api.retrain(result.name, out=where / "model", **opts)
    card = json.loads((where / "model" / "model.json").read_text())
    epochs = sum(int(tr["epochs"] or 0) for tr in trials)
    trial_s = sum(float(tr["duration_s"] or 0) for tr in trials)
    return {"accuracy": float(done.metrics["accuracy"]), "val": float(result.best_value),
            "seconds": time.perf_counter() - t, "cpu_s": cpu_seconds() - cpu, "study_s": study_s,
            "per_epoch": trial_s / epochs if epochs else None,
            "retrain_s": card["wall_time_s"], "retrain_epochs": card["epochs"],
            "train_n": card["train_samples"], "best": result.best_params}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=["classic", "lstm", "transformer", "minilm"])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ft-train", type=int, default=1500)
    ap.add_argument("--ft-trials", type=int, default=2)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--ft-max-len", type=int, default=FT_MAX_LEN)
    ap.add_argument("--ft-freeze", type=int, nargs="+", default=None,
                    help="the fine-tuning's freeze choices (default: 1 3)")
    ap.add_argument("--ft-retrain-full", action=argparse.BooleanOptionalAction, default=True,
                    help="retrain the fine-tuning's best trial on the whole train.csv "
                         "(the study itself sees the --ft-train subsample)")
    ap.add_argument("--json", default=None, help="also write every result to this file")
    args = ap.parse_args(argv)
    quiet_libraries()
    print(machine("cpu"), flush=True)
    folder = Path(args.data_dir).resolve() / "rt_polarity"
    results: dict[str, list[dict[str, object]]] = {}
    per_seed = []
    with LoadMonitor() as load, tempfile.TemporaryDirectory(prefix="tuner-text-") as tmp_s:
        tmp = Path(tmp_s)
        for seed in args.seeds:  # every model once before the next seed: partial runs compare
            for model in args.models:
                if model == "classic":
                    for name, (acc, c, s) in classic(folder, seed).items():
                        results.setdefault(name, []).append({"accuracy": acc, "seconds": s})
                        per_seed.append([name, seed, acc, f"{s:.0f}", f"C={c}"])
                        print(per_seed[-1], flush=True)
                    continue
                ft_train = (subsample(folder, args.ft_train, tmp / f"sub-{seed}")
                            if model == "minilm" and args.ft_train else None)
                r = tuned(model, seed, args, tmp, ft_train)
                name = f"tuner {model} ({Path(STUDIES[model]).stem})"
                results.setdefault(name, []).append(r)
                best = {k: round(v, 5) if isinstance(v, float) else v
                        for k, v in r["best"].items()}  # type: ignore[union-attr]
                per_seed.append([name, seed, r["accuracy"], f"{r['seconds']:.0f}",
                                 f"val {r['val']:.3f}, {r['train_n']} train, "
                                 f"{r['cpu_s']:.0f} CPU s, "
                                 f"{r['per_epoch'] or 0:.0f} s/epoch in trials; {best}"])
                print(per_seed[-1], f"load {load_average()}", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print("\nper seed (test accuracy on test.csv, 2,550 sentences)")
    print(table(["model", "seed", "test accuracy", "seconds", "notes"], per_seed))
    summary = []
    for name, rs in results.items():
        accs = [float(r["accuracy"]) for r in rs]  # type: ignore[arg-type]
        summary.append([name, statistics.median(accs), f"{min(accs):.3f}-{max(accs):.3f}",
                        f"{statistics.median(float(r['seconds']) for r in rs):.0f}"])  # type: ignore[arg-type]
    print(f"\nmedians over seeds {' '.join(map(str, args.seeds))}")
    print(table(["model", "test accuracy", "range", "seconds"], summary))
    ft = results.get(f"tuner minilm ({Path(STUDIES['minilm']).stem})")
    if ft:
        per = [float(r["retrain_s"]) / int(r["retrain_epochs"]) for r in ft  # type: ignore[arg-type]
               if r.get("retrain_epochs")]
        if per:
            print(f"fine-tuning all-MiniLM-L6-v2 on CPU: {statistics.median(per):.0f} s per "
                  f"epoch of {ft[0]['train_n']} sentences (retrain, median over seeds; "
                  f"range {min(per):.0f}-{max(per):.0f})")
    print(load.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
