"""Your own dataset: house prices from a CSV file, for regression.

tuner calls ``load()`` once per worker (it may also ask for ``seed`` and ``data_dir``) and
keeps what it returns on the training device. Return (train, val) or (train, val, test), or
a dict with keys train / val / test; each part an (X, y) pair of tensors or numpy arrays, or
a torch Dataset of (x, y) samples. Without ``val``, tuner holds out the study file's
``validation`` fraction of ``train``. Inputs are standardised by tuner (statistics from the
training part only), and so are regression targets while training: metrics are reported in
the target's own units (thousands here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CSV = Path(__file__).with_name("houses.csv")
TARGET = "price_k"
TEST_FRACTION = 0.2  # kept apart for `tuner retrain` alone; the same rows whatever the seed


def load() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    table = np.genfromtxt(CSV, delimiter=",", names=True, dtype=np.float32)
    features = [name for name in table.dtype.names if name != TARGET]
    x = np.stack([table[name] for name in features], axis=1)
    y = table[TARGET]
    order = np.random.default_rng(0).permutation(len(y))
    n_test = int(len(y) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}
