"""Augmentation overhead: training images/s of tuner's loop on a CIFAR-shaped tensor dataset
(uint8 3x32x32, 10 classes, on the device), without augmentation and with on-device random
crop, flip and cutout (tuner/training/recipes.py), plus the augmentation alone on the same batches.

    python benchmarks/augment.py [--n 5000] [--epochs 2] [--device cpu] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, resolve_device, table

from tuner.data._bundle import Split, make_bundle
from tuner.kinds import InputKind
from tuner.models import build
from tuner.training.context import Context
from tuner.training.train import _setup, train_epoch

CNN = {"depth": 3, "channels": 32, "width": 128, "batch_norm": True}
SETTINGS = {
    "none": {},
    "crop 4": {"augment_crop": 4},
    "crop 4 + flip": {"augment_crop": 4, "augment_flip": True},
    "crop 4 + flip + cutout 8": {"augment_crop": 4, "augment_flip": True, "augment_cutout": 8},
}


def cifar_shaped(n: int) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


def run(args: argparse.Namespace) -> list[list[object]]:
    device = resolve_device(args.device)
    bundle = make_bundle("cifar_shaped", "classification", cifar_shaped(args.n), None, None, 10,
                         InputKind.image).to(device)
    ctx = Context(device=device, seed=0, max_epochs=args.epochs, data=bundle,
                  build_model=lambda p: build("cnn", p, bundle.inputs, 10))
    rows, base = [], None
    for label, aug in SETTINGS.items():
        run_ = _setup({**CNN, "lr": 1e-3, "batch_size": args.batch_size, **aug}, ctx, bundle)
        train_epoch(run_, bundle)  # warm-up: allocator, kernel choice
        t = time.perf_counter()
        for _ in range(args.epochs):
            train_epoch(run_, bundle)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_s = args.n * args.epochs / (time.perf_counter() - t)
        # the augmentation alone, on the same normalised batches (3 passes: it is short)
        t = time.perf_counter()
        for _ in range(3):
            for x, _ in bundle.batches("train", args.batch_size, shuffle=True,
                                       generator=run_.gen):
                run_.recipe.augment(x, run_.gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        gather_s = (time.perf_counter() - t) / (3 * args.n)  # seconds per image
        base = base or (per_s, gather_s)
        # what augmenting adds per image (over gathering the batch), against a training step
        # without it: steadier than comparing two noisy epoch times on a loaded machine
        added = (gather_s - base[1]) * base[0]
        rows.append([label, f"{per_s:,.0f}", f"{100 * (base[0] / per_s - 1):+.1f}%",
                     f"{1 / gather_s:,.0f}", f"{100 * added:+.2f}%"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="training images")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per setting")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(machine(resolve_device(args.device)))
    print(f"cnn {CNN}, {args.n} images 3x32x32, batch {args.batch_size}, {args.epochs} epochs")
    print(table(["augmentation", "train images/s", "epoch time vs none",
                 "gather + augment alone, images/s", "augmentation cost / training time"],
                run(args)))


if __name__ == "__main__":
    main()
