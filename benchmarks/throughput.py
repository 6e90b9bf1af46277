"""Training throughput: tuner's loop against the usual hand-written objective.

Same machine, same MNIST split (54,000 train / 6,000 validation), same MLP
(``tuner.models.build("mlp", ...)``), same Adam, same batch size, validation every epoch:

  tuner         load_builtin + DataBundle.to(device) + train.fit: uint8 data on the device,
                a randperm gather per batch, one host sync per epoch
  hand-written  torchvision MNIST with ToTensor() + Normalize per sample,
                DataLoader(shuffle=True, num_workers=N), loss.item() per batch

A trial is ``--epochs`` epochs and includes loading the data (a hand-written objective loads
it in every trial; tuner's workers load it once and reuse it, so its later trials skip the
"load" column). Run from the repository root:

    TUNER_DATA_DIR=../shared/data .venv/bin/python benchmarks/throughput.py --device cpu
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, random_split
from torchvision import datasets, transforms  # imported here: neither load time counts it

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone, not installed
from tuner.data import load_builtin  # noqa: E402
from tuner.models import build  # noqa: E402
from tuner.training.context import Context  # noqa: E402
from tuner.training.train import fit  # noqa: E402

VALIDATION = 0.1


@dataclass
class Result:
    name: str
    load_s: float  # reading the dataset and moving it to the device
    epoch_s: list[float]  # train + validate, per epoch
    total_s: float  # load + all epochs: one trial
    accuracy: float  # validation accuracy after the last epoch
    n_train: int

    def images_per_s(self, epochs: slice) -> float:
        times = self.epoch_s[epochs]
        return self.n_train * len(times) / sum(times) if times else float("nan")


class _Clock:
    """A reporter that notes when each epoch (training and validation) ended."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        self.times.append(time.perf_counter())
        return False

    def stop_requested(self) -> bool:
        return False


def run_tuner(data_dir: str, device: torch.device, params: dict, epochs: int) -> Result:
    start = time.perf_counter()
    data = load_builtin("mnist", data_dir, validation=VALIDATION, seed=0, download=False)
    data = data.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loaded = time.perf_counter()
    clock = _Clock()
    ctx = Context(device=device, seed=0, max_epochs=epochs, data=data, reporter=clock)
    accuracy = fit(params, ctx)  # the report after each epoch follows a host sync
    ends = [loaded, *clock.times]
    epoch_s = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return Result("tuner", loaded - start, epoch_s, time.perf_counter() - start, accuracy,
                  len(data.train))


def run_handwritten(data_dir: str, device: torch.device, params: dict, epochs: int,
                    workers: int) -> Result:
    start = time.perf_counter()
    tfm = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    full = datasets.MNIST(data_dir, train=True, download=False, transform=tfm)
    n_val = round(len(full) * VALIDATION)
    train_set, val_set = random_split(full, [len(full) - n_val, n_val],
                                      generator=torch.Generator().manual_seed(0))
    cuda = device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=params["batch_size"], shuffle=True,
                              num_workers=workers, pin_memory=cuda,
                              persistent_workers=workers > 0)
    val_loader = DataLoader(val_set, batch_size=1000, num_workers=workers, pin_memory=cuda,
                            persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = build("mlp", params, (1, 28, 28), 10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
    loaded = time.perf_counter()
    epoch_s, accuracy = [], 0.0
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        running = 0.0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()  # the usual per-batch sync, for a progress bar or a log
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        accuracy = correct / n_val
        epoch_s.append(time.perf_counter() - t)
    return Result(f"hand-written, {workers} workers", loaded - start, epoch_s,
                  time.perf_counter() - start, accuracy, len(train_set))


def table(results: list[Result], device: torch.device, args: argparse.Namespace) -> str:
    head = (f"MNIST MLP 784-256-256-10, Adam, batch {args.batch_size}, {args.epochs} epochs, "
            f"device {device}, {torch.get_num_threads()} torch threads, "
            f"load average {os.getloadavg()[0]:.1f} at the end (other processes skew CPU runs)")
    cols = f"{'pipeline':<26}{'load s':>8}{'epoch 1 img/s':>15}{'later img/s':>13}" \
           f"{'s/trial':>10}{'val acc':>9}"
    lines = [head, "", cols, "-" * len(cols)]
    for r in results:
        lines.append(f"{r.name:<26}{r.load_s:>8.2f}{r.images_per_s(slice(0, 1)):>15,.0f}"
                     f"{r.images_per_s(slice(1, None)):>13,.0f}{r.total_s:>10.2f}"
                     f"{r.accuracy:>9.4f}")
    ours = results[0]
    lines.append("")
    for r in results[1:]:
        speed = ours.images_per_s(slice(1, None)) / r.images_per_s(slice(1, None))
        if speed != speed:  # one epoch: compare the first
            speed = ours.images_per_s(slice(0, 1)) / r.images_per_s(slice(0, 1))
        lines.append(f"tuner vs {r.name}: {speed:.1f}x images/s, "
                     f"{r.total_s / ours.total_s:.1f}x faster per trial")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader workers of the hand-written loop (one row each)")
    parser.add_argument("--data-dir", default=os.environ.get("TUNER_DATA_DIR", "../shared/data"))
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    params = {"depth": 2, "width": 256, "optimizer": "adam", "lr": 1e-3,
              "batch_size": args.batch_size}
    if device.type == "cuda":  # CUDA start-up (context, allocator) is not the loop's time
        torch.zeros(1, device=device).add_(1)
        torch.cuda.synchronize(device)
    results = [run_tuner(args.data_dir, device, params, args.epochs)]
    for workers in args.num_workers:
        results.append(run_handwritten(args.data_dir, device, params, args.epochs, workers))
    print(table(results, device, args))


if __name__ == "__main__":
    main()
