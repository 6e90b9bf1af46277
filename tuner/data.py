"""Datasets as tensors kept on the training device (the airbench way: no DataLoader).

A :class:`DataBundle` holds the train / validation / test :class:`Split` s of one dataset.
Images stay uint8 (4x smaller than float32) and are normalised batch by batch on the device;
a batch is one ``randperm`` slice and one gather, with no per-sample Python work.

Load once per worker and reuse the bundle for every trial: the load functions are pure.

    load_builtin("mnist", "data", validation=0.1, seed=0).to("cuda")
    from_user(((X, y), (X_val, y_val)), "regression", validation=0.1, seed=0, name="mine")
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tuner import vocab
from tuner.errors import DataError

SPLITS = ("train", "val", "test")
# free GPU memory kept back when deciding whether a dataset fits: activations, weights and
# the allocator's fragmentation need room too (bytes)
GPU_MARGIN_BYTES = 2 * 2**30
GPU_MARGIN_FRACTION = 0.2
# a fixed seed for the held-out test split of datasets that ship without one: the test set
# must be the same whatever the study's seed
TEST_SEED = 0
TEST_FRACTION = 0.2


# eq=False: tensors have no truth value to compare by, and a bundle hashes by identity
@dataclass(frozen=True, eq=False)
class Split:
    """Inputs and targets of one split. Images uint8 (N,C,H,W), tabular float32 (N,F);
    class labels int64 (N,), regression targets float32 (N,)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return (f"Split({len(self)} samples, x {self.x.dtype} {tuple(self.x.shape[1:])}, "
                f"y {self.y.dtype}, on {self.x.device})")

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def take(self, idx: Tensor) -> Split:
        return Split(self.x[idx], self.y[idx])


@dataclass(frozen=True, eq=False)
class DataBundle:
    """One dataset, split, with its normalisation statistics (from the train split only)."""

    train: Split
    val: Split | None
    test: Split | None
    input_shape: tuple[int, ...]  # one sample: (1, 28, 28) or (64,)
    num_outputs: int  # classes, or 1 for regression
    task: str  # "classification" | "regression"
    # per channel (1,C,1,1) for images, per feature (1,F) for tabular, in the units of
    # x/255 for uint8 images and of x otherwise
    mean: Tensor
    std: Tensor
    # regression targets are trained on as (y - y_mean) / y_std
    y_mean: float = 0.0
    y_std: float = 1.0
    name: str = "data"
    # set by to() when the data did not fit in GPU memory: the splits stay on the host and
    # each batch is gathered into pinned memory and copied here with non_blocking=True
    batch_device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """Where batches come out (the training device)."""
        return self.batch_device if self.batch_device is not None else self.train.x.device

    def __repr__(self) -> str:
        sizes = "/".join(str(len(s)) if s is not None else "-"
                         for s in (self.train, self.val, self.test))
        return (f"DataBundle({self.name}: {self.task}, train/val/test {sizes}, input "
                f"{self.input_shape}, {self.num_outputs} outputs, "
                f"{self.nbytes / 2**20:.1f} MiB, on {self.device})")

    @property
    def nbytes(self) -> int:
        return sum(s.x.nbytes + s.y.nbytes for s in self._splits())

    def _splits(self) -> list[Split]:
        return [s for s in (self.train, self.val, self.test) if s is not None]

    def split(self, name: str | Split) -> Split:
        if isinstance(name, Split):
            return name
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        split = getattr(self, name)
        if split is None:
            raise DataError(f"{self.name} has no {name} split")
        return split

    # ---- device ------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> DataBundle:
        """All tensors on ``device``; on CUDA, when the data would not fit in free memory
        (with a margin), the splits stay on the host and batches are copied (slower)."""
        device = resolve_device(device)
        if device.type == "cuda" and not _fits_on_gpu(self.nbytes, device):
            return self._staged(device)
        moved = {k: (s.to(device) if s is not None else None)
                 for k, s in (("train", self.train), ("val", self.val), ("test", self.test))}
        return replace(self, **moved, mean=self.mean.to(device), std=self.std.to(device),
                       batch_device=None)

    def _staged(self, device: torch.device) -> DataBundle:
        """The fallback of :meth:`to`: host-resident splits, batches copied to ``device``."""
        cpu = torch.device("cpu")
        moved = {k: (s.to(cpu) if s is not None else None)
                 for k, s in (("train", self.train), ("val", self.val), ("test", self.test))}
        return replace(self, **moved, mean=self.mean.to(device), std=self.std.to(device),
                       batch_device=device)

    # ---- batches -----------------------------------------------------------------------
    def batches(self, split: str | Split, batch_size: int, *, shuffle: bool,
                generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(x, y) batches: x float32 normalised, y labels or scaled regression targets.

        The permutation is drawn on the data's device with ``generator`` (a generator on that
        device); the last partial batch is kept."""
        s = self.split(split)
        n = len(s)
        host = self.batch_device is not None
        scale, shift = self._affine(s.x.dtype)
        if shuffle:
            order = torch.randperm(n, device=s.x.device, generator=generator)
        else:
            order = None
        for start in range(0, n, batch_size):
            if order is None:
                xb, yb = s.x[start:start + batch_size], s.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                xb, yb = _gather(s.x, idx, host), _gather(s.y, idx, host)
            if host:
                xb = xb.to(self.batch_device, non_blocking=True)
                yb = yb.to(self.batch_device, non_blocking=True)
            # not in place: xb may be a view of the stored split (unshuffled float data)
            yield (xb.float() * scale).sub_(shift), self.scale_targets(yb)

    def normalize(self, x: Tensor) -> Tensor:
        """Raw inputs (uint8 or float) -> float32 with zero mean and unit std per channel."""
        scale, shift = self._affine(x.dtype)
        return (x.float() * scale).sub_(shift)

    def _affine(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """((x / 255) - mean) / std as x * scale - shift: one multiply, one subtract."""
        scale = 1.0 / (255.0 * self.std) if dtype == torch.uint8 else 1.0 / self.std
        return scale, self.mean / self.std

    def scale_targets(self, y: Tensor) -> Tensor:
        if self.task != "regression":
            return y
        return (y - self.y_mean) / self.y_std

    # ---- resplitting -------------------------------------------------------------------
    def folds(self, k: int, seed: int) -> list[DataBundle]:
        """k-fold cross-validation over train+val: fold i validates on the i-th of k seeded,
        disjoint parts and trains on the others. Normalisation statistics are recomputed on
        each fold's training part, so the fold's validation data never leaks into them."""
        if k < 2:
            raise ValueError(f"k-fold cross-validation needs k >= 2 (got {k})")
        pool = _concat(self.train, self.val)
        if len(pool) < k:
            raise DataError(f"{self.name}: {len(pool)} samples cannot make {k} folds")
        perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
        parts = [p.sort().values.to(pool.x.device) for p in perm.tensor_split(k)]
        bundles = []
        for i, held_out in enumerate(parts):
            rest = torch.cat([p for j, p in enumerate(parts) if j != i]).sort().values
            bundles.append(self._resplit(pool.take(rest), pool.take(held_out), self.test))
        return bundles

    def final(self) -> DataBundle:
        """Train on train+val, evaluate on the test split (retraining the best config)."""
        if self.test is None:
            raise DataError(
                f"{self.name} has no test split to evaluate on; return (train, val, test) "
                "from the data loader to keep one apart"
            )
        return self._resplit(_concat(self.train, self.val), self.test, None)

    def _resplit(self, train: Split, val: Split | None, test: Split | None) -> DataBundle:
        fresh = make_bundle(self.name, self.task, train, val, test, self.num_outputs)
        return replace(fresh, mean=fresh.mean.to(self.device), std=fresh.std.to(self.device),
                       batch_device=self.batch_device)


# ---- building bundles --------------------------------------------------------------------
def make_bundle(name: str, task: str, train: Split, val: Split | None, test: Split | None,
                num_outputs: int) -> DataBundle:
    """A bundle with normalisation statistics computed on ``train``."""
    mean, std = _input_stats(train.x)
    y_mean, y_std = 0.0, 1.0
    if task == "regression":
        y = train.y.double()
        y_mean = float(y.mean())
        y_std = float(y.std(correction=0)) if len(y) > 1 else 1.0
        y_std = y_std if y_std > 0 else 1.0
    return DataBundle(train=train, val=val, test=test, input_shape=tuple(train.x.shape[1:]),
                      num_outputs=num_outputs, task=task, mean=mean, std=std,
                      y_mean=y_mean, y_std=y_std, name=name)


def _input_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std per channel (dim 1 of N,C,H,W) or per feature (N,F), float32, shaped to
    broadcast over a batch; for uint8 in units of x/255. Computed in float64."""
    if x.dtype == torch.uint8:
        mean, var = _uint8_moments(x)
    else:
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x.double(), dim=dims, correction=0)
    std = var.clamp_min(0).sqrt()
    # a constant feature (digits has blank border pixels) is centred, not scaled up
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    shape = (1, x.shape[1], *[1] * (x.dim() - 2))
    return mean.float().reshape(shape), std.float().reshape(shape)


def _uint8_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Exact per-channel mean and variance of x/255 from a 256-bin histogram per channel:
    no float copy of the images (CIFAR-10 in float64 would take 1.2 GB)."""
    levels = torch.arange(256, dtype=torch.float64, device=x.device) / 255
    means, variances = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        p = hist / hist.sum()
        mean = (p * levels).sum()
        means.append(mean)
        variances.append((p * (levels - mean).square()).sum())
    return torch.stack(means), torch.stack(variances)


def resolve_device(device: str | torch.device) -> torch.device:
    """``cuda`` -> ``cuda:N`` (the current GPU), so that devices compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _gather(t: Tensor, idx: Tensor, pinned: bool) -> Tensor:
    if not pinned or not torch.cuda.is_available():
        return t[idx]
    # a fresh pinned buffer per batch: the caching host allocator will not hand it out again
    # before the non_blocking copy that reads it has finished
    out = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, idx, out=out)


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    free, total = torch.cuda.mem_get_info(device)
    margin = max(GPU_MARGIN_BYTES, GPU_MARGIN_FRACTION * total)
    return nbytes < free - margin


def _concat(a: Split, b: Split | None) -> Split:
    if b is None:
        return a
    return Split(torch.cat([a.x, b.x.to(a.x.device)]), torch.cat([a.y, b.y.to(a.y.device)]))


def carve(split: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """(train, val): a seeded ``fraction`` of ``split`` held out for validation (none when the
    fraction is 0, as for k-fold studies). Each part keeps the original order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1) (got {fraction})")
    n = len(split)
    n_val = min(max(round(n * fraction), 1), n - 1) if fraction > 0 else 0
    if n_val == 0:
        return split, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(split.x.device)
    return split.take(perm[n_val:].sort().values), split.take(perm[:n_val].sort().values)


# ---- built-in datasets -------------------------------------------------------------------
# name -> (torchvision class, folder under data_dir it reads, what belongs in that folder)
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", "the four MNIST *-ubyte files"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", "the four Fashion-MNIST *-ubyte files"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                "the extracted CIFAR-10 python batches (data_batch_1..5, test_batch, ...)"),
}


def load_builtin(name: str, data_dir: str | Path, *, validation: float, seed: int,
                 download: bool = True) -> DataBundle:
    """A built-in dataset (``vocab.DATASETS``) on the CPU, with ``validation`` of the training
    set held out by a permutation seeded with ``seed``. The test split is kept apart."""
    if name not in vocab.DATASETS:
        raise DataError(f"unknown dataset {name!r}; use one of {', '.join(vocab.DATASETS)}")
    task = vocab.DATASETS[name]
    if name in _TORCHVISION:
        train, test = _load_torchvision(name, Path(data_dir), download)
        num_outputs = 10
    else:
        x, y = _load_sklearn(name)
        if name == "moons":  # generated as 2000 train + 500 test samples
            train, test = Split(x[:2000], y[:2000]), Split(x[2000:], y[2000:])
        else:
            train, test = carve(Split(x, y), TEST_FRACTION, TEST_SEED)
        num_outputs = 1 if task == "regression" else int(y.max()) + 1
    train, val = carve(train, validation, seed)
    return make_bundle(name, task, train, val, test, num_outputs)


def _load_torchvision(name: str, data_dir: Path, download: bool) -> tuple[Split, Split]:
    import torchvision.datasets  # noqa: PLC0415  (slow import, only for these datasets)

    cls_name, folder, contents = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    try:
        parts = cls(data_dir, train=True), cls(data_dir, train=False)
    except RuntimeError:  # torchvision's "Dataset not found"
        parts = None
    if parts is None:
        where = data_dir / folder
        if not download:
            raise DataError(
                f"{cls_name} not found in {where}; put {contents} there or set TUNER_DATA_DIR "
                "to a folder that has them"
            ) from None
        try:
            parts = cls(data_dir, train=True, download=True), cls(data_dir, train=False)
        except Exception as e:  # no network, a mirror down, a bad checksum: all one fix
            raise DataError(
                f"{cls_name} not found in {where} and could not be downloaded ({_reason(e)}); "
                f"put {contents} there or set TUNER_DATA_DIR to a folder that has them"
            ) from None
    return _torchvision_split(parts[0]), _torchvision_split(parts[1])


def _torchvision_split(ds: Any) -> Split:
    x = torch.as_tensor(ds.data)
    if x.dim() == 3:  # MNIST: (N, H, W) -> (N, 1, H, W)
        x = x.unsqueeze(1)
    elif x.shape[-1] == 3:  # CIFAR-10 ships (N, H, W, C) numpy
        x = x.permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.as_tensor(ds.targets, dtype=torch.int64))


def _load_sklearn(name: str) -> tuple[Tensor, Tensor]:
    import sklearn.datasets  # noqa: PLC0415

    if name == "digits":
        x, y = sklearn.datasets.load_digits(return_X_y=True)
    elif name == "moons":
        x, y = sklearn.datasets.make_moons(n_samples=2500, noise=0.25, random_state=TEST_SEED)
    else:  # diabetes
        x, y = sklearn.datasets.load_diabetes(return_X_y=True)
    y_dtype = torch.float32 if vocab.DATASETS[name] == "regression" else torch.int64
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=y_dtype)


# ---- a user's data loader ----------------------------------------------------------------
_EXPECTED = ("expected (train, val), (train, val, test) or a dict with keys train/val/test, "
             "each an (X, y) pair of tensors or numpy arrays, or a torch Dataset "
             "(without val, one is carved from train)")


def from_user(result: Any, task: str, *, validation: float, seed: int, name: str) -> DataBundle:
    """What a user's ``data:`` loader returned -> a bundle on the CPU. A missing ``val`` is
    carved out of ``train`` (``validation`` fraction, seeded)."""
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be classification or regression (got {task!r})")
    splits = {k: _user_split(part, task, f"{name}: {k}") if part is not None or k == "train"
              else None for k, part in _user_parts(result, name).items()}
    train, val, test = splits["train"], splits.get("val"), splits.get("test")
    if val is None:
        train, val = carve(train, validation, seed)
    for label, s in (("val", val), ("test", test)):
        if s is not None and s.x.shape[1:] != train.x.shape[1:]:
            raise DataError(f"{name}: {label} inputs are shaped {tuple(s.x.shape[1:])} but train "
                            f"inputs {tuple(train.x.shape[1:])}; make them match")
    if task == "regression":
        num_outputs = 1
    else:
        # labels 0..C-1; None and empty splits are falsy
        num_outputs = 1 + max(int(s.y.max()) for s in (train, val, test) if s)
    return make_bundle(name, task, train, val, test, num_outputs)


def _user_parts(result: Any, name: str) -> dict[str, Any]:
    if isinstance(result, Mapping):
        unknown = set(result) - set(SPLITS)
        if "train" not in result or unknown:
            keys = ", ".join(map(repr, result))
            raise DataError(f"{name}: the data loader returned a dict of {keys}; {_EXPECTED}")
        return dict(result)
    if isinstance(result, tuple | list) and len(result) in (2, 3) and not _is_array(result[0]):
        return dict(zip(SPLITS, result, strict=False))
    raise DataError(f"{name}: the data loader returned {_describe(result)}; {_EXPECTED}")


def _user_split(part: Any, task: str, where: str) -> Split:
    if isinstance(part, torch.utils.data.Dataset):
        x, y = _materialise(part, where)
    elif isinstance(part, tuple | list) and len(part) == 2 and all(map(_is_array, part)):
        x, y = (p if isinstance(p, Tensor) else torch.from_numpy(np.asarray(p)) for p in part)
    else:
        raise DataError(f"{where} is {_describe(part)}; {_EXPECTED}")
    if x.dim() < 2 or len(x) != len(y):
        raise DataError(f"{where}: X is shaped {tuple(x.shape)} and y {tuple(y.shape)}; X needs "
                        "one row per sample and y one target per row")
    if x.dim() == 3:  # (N, H, W) greyscale images get their channel axis
        x = x.unsqueeze(1)
    if x.dtype != torch.uint8:
        x = x.float()
    return Split(x.contiguous(), _targets(y.reshape(len(y), -1), task, where))


def _targets(y: Tensor, task: str, where: str) -> Tensor:
    if y.shape[1] != 1:
        raise DataError(f"{where}: y is shaped {tuple(y.shape)}; give one target per sample")
    y = y[:, 0]
    if task == "regression":
        return y.float()
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise DataError(f"{where}: classification labels must be integers 0..C-1 (got floats)")
    y = y.long()
    if len(y) and (low := int(y.min())) < 0:
        raise DataError(f"{where}: classification labels must be integers 0..C-1 (got {low})")
    return y


def _materialise(ds: torch.utils.data.Dataset, where: str) -> tuple[Tensor, Tensor]:
    """A Dataset of (x, y) samples -> two tensors, read once in big batches."""
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0], ds.tensors[1]
    loader = torch.utils.data.DataLoader(ds, batch_size=4096, shuffle=False)
    xs, ys = [], []
    try:
        for batch in loader:
            if not (isinstance(batch, list | tuple) and len(batch) == 2):
                raise TypeError("samples are not (x, y) pairs")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
    except (TypeError, RuntimeError, ValueError) as e:
        raise DataError(f"{where}: cannot read the Dataset as (tensor, label) samples "
                        f"({_reason(e)}); return tensors from __getitem__, not images") from None
    if not xs:
        raise DataError(f"{where}: the Dataset is empty")
    return torch.cat(xs), torch.cat(ys)


def _reason(e: BaseException) -> str:
    """The last line of an error, which names the cause (torchvision's download errors list
    each mirror tried, then why)."""
    lines = [line.strip(" <>") for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:120]


def _is_array(a: Any) -> bool:
    return isinstance(a, Tensor | np.ndarray)


def _describe(obj: Any) -> str:
    if isinstance(obj, tuple | list):
        inner = ", ".join(type(o).__name__ for o in obj[:4])
        return f"a {type(obj).__name__} of {len(obj)} ({inner}{', ...' if len(obj) > 4 else ''})"
    return f"a {type(obj).__name__}"
