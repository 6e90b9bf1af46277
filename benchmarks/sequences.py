"""Sequences: sequential MNIST with an LSTM, tuner's loop against a hand-written LSTM loop over
a DataLoader (same model, batch and optimizer); and UEA/UCR test accuracy of tuner's rnn and
cnn1d beside aeon's RocketClassifier on the same official test split.

    python benchmarks/sequences.py [--train 10000] [--epochs 1] [--kernels 2000] [--skip-mnist]
    python benchmarks/sequences.py --skip-mnist --tuned [--seeds 0 1 2] [--sets ItalyPowerDemand]

``--tuned``: for each set, the study file of ``search_spaces/`` (validation taken from the
official train split only) runs through ``tuner.api`` on a temporary SQLite file, then
``api.retrain`` retrains its best trial on the whole train split and scores it once on the test
split; Rocket (``--kernels``, default 10,000 here: aeon's own default) fits the train split and
scores the same test split, with the same seed. Seconds: the study plus the retrain, against
Rocket's fit plus predict. Without ``--tuned``: fixed params, no study (the older, quicker run).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import DEFAULT_DATA_DIR, REPO, LoadMonitor, machine, quiet_libraries, resolve_device, table
from torch import nn

from tuner import data
from tuner.data._bundle import make_bundle
from tuner.kinds import InputKind
from tuner.models import build
from tuner.training.context import Context
from tuner.training.train import fit, fit_final

LSTM = {"cell": "lstm", "width": 128, "pool": "last", "init": "default", "clip_norm": 0}
TRAIN = {"lr": 3e-3, "batch_size": 256, "optimizer": "adam"}


def smnist(args: argparse.Namespace, device: torch.device) -> list[list[object]]:
    full = data.load("mnist", data.Request(args.data_dir, 0.1, 0, False, InputKind.sequence))
    train = full.train.take(torch.arange(min(args.train, len(full.train))))
    bundle = make_bundle("smnist", "classification", train, full.val, None, 10,
                         InputKind.sequence).to(device)
    rows = []
    ctx = Context(device=device, seed=0, max_epochs=args.epochs, data=bundle,
                  build_model=lambda p: build("rnn", p, bundle.inputs, 10))
    t = time.perf_counter()
    acc = fit({**TRAIN, **LSTM}, ctx)
    rows.append(["tuner fit (rnn lstm)", (time.perf_counter() - t) / args.epochs, acc])

    # the textbook loop: a DataLoader over normalised float tensors, .item() per batch
    torch.manual_seed(0)
    x = ((train.x - bundle.mean.cpu()) / bundle.std.cpu())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, train.y),
                                         batch_size=TRAIN["batch_size"], shuffle=True)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.head = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    model = Net().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN["lr"])
    t = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
    per_epoch = (time.perf_counter() - t) / args.epochs
    model.eval()
    vx = ((full.val.x - bundle.mean.cpu()) / bundle.std.cpu()).to(device)
    with torch.no_grad():
        acc = float((model(vx).argmax(1).cpu() == full.val.y).float().mean())
    rows.append(["hand-written LSTM + DataLoader", per_epoch, acc])
    return rows


UEA = {
    "JapaneseVowels": [("rnn", {"cell": "gru", "width": 64, "bidirectional": True,
                                "pool": "mean", "lr": 3e-3, "batch_size": 16}, 40)],
    "BasicMotions": [("cnn1d", {"channels": 32, "lr": 3e-3, "batch_size": 8}, 40)],
    "ItalyPowerDemand": [("cnn1d", {"channels": 32, "lr": 3e-3, "batch_size": 8}, 40)],
}


def uea(args: argparse.Namespace, device: torch.device) -> list[list[object]]:
    rows = []
    for name, configs in UEA.items():
        if args.sets and name not in args.sets:
            continue
        bundle = data.load(f"uea:{name}", data.Request(validation=0.2, seed=0)).to(device)
        for family, params, epochs in configs:
            final = bundle.final()
            ctx = Context(device=device, seed=0, max_epochs=epochs, data=final,
                          build_model=lambda p, f=family, b=final: build(f, p, b.inputs,
                                                                           b.num_outputs))
            t = time.perf_counter()
            _, metrics = fit_final(params, ctx)
            rows.append([name, f"tuner {family}", metrics["accuracy"], time.perf_counter() - t])
        if args.kernels:
            acc, seconds = rocket(name, args.kernels, 0)
            rows.append([name, f"aeon Rocket ({args.kernels} kernels)", acc, seconds])
    return rows


def rocket(name: str, kernels: int, seed: int) -> tuple[float, float]:
    """aeon's RocketClassifier fitted on the official train split: (test accuracy, seconds),
    in a child process. Not in this one: importing aeon (numba's OpenMP runtime beside
    torch's) left torch on 2 threads and about 6x slower per CPU-second for the trials after
    it, in the same process."""
    import json
    import subprocess
    import sys

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import sequences, "
            f"json; print(json.dumps(sequences.rocket_here({name!r}, {kernels}, {seed})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    acc, seconds = json.loads(out.stdout.strip().splitlines()[-1])
    return acc, seconds


def rocket_here(name: str, kernels: int, seed: int) -> tuple[float, float]:
    from aeon.classification.convolution_based import RocketClassifier

    from tuner.data.uea import read

    train, test, _ = read(name)
    # aeon wants (N, channels, T); unequal lengths (JapaneseVowels) are zero-padded at the end
    xtr, xte = (s.x.nan_to_num(0).transpose(1, 2).double().numpy() for s in (train, test))
    t = time.perf_counter()
    clf = RocketClassifier(n_kernels=kernels, random_state=seed).fit(xtr, train.y.numpy())
    acc = float((clf.predict(xte) == test.y.numpy()).mean())
    return acc, time.perf_counter() - t


# the study file each set is tuned with (search_spaces/)
STUDIES = {
    "JapaneseVowels": "japanese_vowels_gru.yaml",
    "BasicMotions": "basic_motions_cnn1d.yaml",
    "ItalyPowerDemand": "italy_power_cnn1d.yaml",
    "GunPoint": "gunpoint_cnn1d.yaml",
    # the time-series Transformer on the set of the GRU (--sets JapaneseVowels+transformer)
    "JapaneseVowels+transformer": "japanese_vowels_transformer.yaml",
}


def tuned_study(name: str, seed: int, args: argparse.Namespace,
                folder: Path) -> tuple[float, float, float, dict[str, object]]:
    """Run the set's study through the API on a fresh SQLite file, retrain its best trial:
    (test accuracy, best validation accuracy, seconds, the best trial's params)."""
    from tuner import api

    where = folder / f"{name}-{seed}"
    opts = {"storage": f"sqlite:///{where}.db", "device": args.device, "data_dir": args.data_dir,
            "checkpoint_dir": str(where / "ckpt")}
    t = time.perf_counter()
    result = api.run(REPO / "search_spaces" / STUDIES[name], seed=seed, **opts)
    done = api.retrain(result.name, out=where / "model", **opts)
    return (float(done.metrics["accuracy"]), float(result.best_value),
            time.perf_counter() - t, result.best_params)


def uea_tuned(args: argparse.Namespace) -> tuple[list[list[object]], list[list[object]]]:
    """Per seed: tuner's tuned-and-retrained model and Rocket; then medians over the seeds."""
    per_seed, summary = [], []
    with tempfile.TemporaryDirectory(prefix="tuner-uea-") as tmp:
        for name in args.sets or STUDIES:
            study = Path(STUDIES[name]).stem
            runs: dict[str, list[tuple[float, float]]] = {study: [], "rocket": []}
            for seed in args.seeds:
                acc, val, seconds, best = tuned_study(name, seed, args, Path(tmp))
                runs[study].append((acc, seconds))
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in best.items()
                         if k in SHOWN}
                per_seed.append([name, seed, f"tuner {study} (val {val:.3f})", acc, seconds,
                                 " ".join(f"{k}={v}" for k, v in shown.items())])
                acc, seconds = rocket(name.split("+")[0], args.kernels, seed)
                runs["rocket"].append((acc, seconds))
                per_seed.append([name, seed, f"aeon Rocket ({args.kernels} kernels)", acc,
                                 seconds, ""])
            for model, rs in runs.items():
                accs = [a for a, _ in rs]
                summary.append([name, f"tuner {model}" if model == study else
                                f"aeon Rocket ({args.kernels} kernels)",
                                statistics.median(accs), f"{min(accs):.3f}-{max(accs):.3f}",
                                statistics.median(s for _, s in rs)])
    return per_seed, summary


# the best trial's params shown per seed (the rest are the study's constants)
SHOWN = ("cell", "width", "depth", "channels", "kernel_size", "residual", "bidirectional",
         "pool", "dropout", "lr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train", type=int, default=10_000, help="sMNIST training sequences")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--kernels", type=int, default=None,
                    help="Rocket kernels (0: skip; default 2000, or 10000 with --tuned)")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--tuned", action="store_true",
                    help="tune each set's study of search_spaces/, retrain its best trial")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sets", nargs="+", choices=sorted(STUDIES), default=None)
    args = ap.parse_args()
    if args.kernels is None:
        args.kernels = 10_000 if args.tuned else 2000
    device = resolve_device(args.device)
    print(machine(device))
    with LoadMonitor() as load:
        if not args.skip_mnist:
            print(f"\nsequential MNIST, LSTM 128, batch 256, {args.train} train sequences, "
                  f"{args.epochs} epoch(s)")
            print(table(["loop", "s/epoch", "val accuracy"], smnist(args, device)))
        if args.tuned:
            quiet_libraries()
            per_seed, summary = uea_tuned(args)
            print("\nUEA/UCR, per seed (tuner: the study's best trial retrained on the train "
                  "split, tested once; Rocket: fitted on the train split)")
            print(table(["set", "seed", "model", "test accuracy", "seconds", "best trial"],
                        per_seed))
            print(f"\nmedians over seeds {' '.join(map(str, args.seeds))} (official test split)")
            print(table(["set", "model", "test accuracy", "range", "seconds"], summary))
        else:
            print("\nUEA test accuracy (official split; tuner: fixed params, train+val -> test)")
            print(table(["set", "model", "test accuracy", "seconds"], uea(args, device)))
    print(load.summary())


if __name__ == "__main__":
    main()
