"""Shared fixtures: a tiny MNIST-format dataset that loads through torchvision's real reader."""

from __future__ import annotations

import os
import struct
from pathlib import Path

# On parallel workers (pytest-xdist) torch and numpy compute on one thread per process, and so
# do the worker processes the tests start (they inherit it): the workers share the cores.
# Set before numpy or torch is imported: they read it once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def tiny_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images whose class is a bright 5x5 block at one of 10 places, on
    noise: learnable in an epoch or two, and every image distinct."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 80, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = 4 + 12 * (c // 5), 1 + 5 * (c % 5)
        images[i, r:r + 5, col:col + 5] = rng.integers(180, 256, size=(5, 5), dtype=np.uint8)
    return images, labels


def write_mnist(root: Path, folder: str = "MNIST", *, n_train: int = 600, n_test: int = 200,
                seed: int = 0) -> Path:
    """Write tiny IDX files in torchvision's layout, ``root/<folder>/raw/*-ubyte``."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = tiny_mnist(n, s)
        # IDX: big-endian magic (0x0803 images, 0x0801 labels), then the sizes, then bytes
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x0801, n) + labels.tobytes())
    return Path(root)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding tiny MNIST and FashionMNIST (600 train, 200 test images each)."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, "MNIST")
    write_mnist(root, "FashionMNIST", seed=10)
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests first, so that the parallel workers start on the long ones and the
    short ones fill in around them, rather than one long test running alone at the end
    (the same order on every xdist worker: a stable sort); ``gpu`` tests skip without a
    CUDA device (torch is imported only if one is marked)."""
    items.sort(key=lambda item: "slow" not in item.keywords)
    marked = [item for item in items if "gpu" in item.keywords]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in marked:
        item.add_marker(skip)
