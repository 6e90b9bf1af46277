"""Sequences: sequential MNIST with an LSTM, tuner's loop against a hand-written LSTM loop over
a DataLoader (same model, batch and optimizer); and UEA test accuracy of tuner's rnn and cnn1d
(fixed params, retrained on train+val, scored on the official test split) beside aeon's
RocketClassifier on the same split.

    python benchmarks/sequences.py [--train 10000] [--epochs 1] [--kernels 2000] [--skip-mnist]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import DEFAULT_DATA_DIR, machine, resolve_device, table
from torch import nn

from tuner import data
from tuner.context import Context
from tuner.data._bundle import make_bundle
from tuner.kinds import InputKind
from tuner.models import build
from tuner.train import fit, fit_final

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
            from aeon.classification.convolution_based import RocketClassifier

            from tuner.data.uea import read

            train, test, _ = read(name)
            # aeon wants (N, channels, T); these three sets have equal lengths
            xtr, xte = (s.x.nan_to_num(0).transpose(1, 2).double().numpy() for s in (train, test))
            t = time.perf_counter()
            clf = RocketClassifier(n_kernels=args.kernels, random_state=0).fit(xtr, train.y.numpy())
            acc = float((clf.predict(xte) == test.y.numpy()).mean())
            rows.append([name, f"aeon Rocket ({args.kernels} kernels)", acc,
                         time.perf_counter() - t])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train", type=int, default=10_000, help="sMNIST training sequences")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--kernels", type=int, default=2000, help="Rocket kernels (0: skip)")
    ap.add_argument("--skip-mnist", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    print(machine(device))
    if not args.skip_mnist:
        print(f"\nsequential MNIST, LSTM 128, batch 256, {args.train} train sequences, "
              f"{args.epochs} epoch(s)")
        print(table(["loop", "s/epoch", "val accuracy"], smnist(args, device)))
    print("\nUEA test accuracy (official split; tuner: fixed params, train+val -> test)")
    print(table(["set", "model", "test accuracy", "seconds"], uea(args, device)))


if __name__ == "__main__":
    main()
