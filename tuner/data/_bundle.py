"""Datasets as tensors kept on the training device (the airbench way: no DataLoader).

A :class:`DataBundle` holds the train / validation / test :class:`Split` s of one dataset and
the kind of its samples (:class:`~tuner.kinds.InputKind`), which decides how it is
normalised. Images stay uint8 (4x smaller than float32) and are normalised batch by batch on
the device; a batch is one ``randperm`` slice and one gather, with no per-sample Python work.
Token ids are passed through as integers.

Load once per worker and reuse the bundle for every trial: the loaders are pure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from tuner.device import canonical
from tuner.errors import DataError
from tuner.kinds import InputKind, Inputs

SPLITS = ("train", "val", "test")
# free GPU memory kept back when deciding whether a dataset fits: activations, weights and
# the allocator's fragmentation need room too: 2 GiB, or 10% of what is free if more (a
# share of *total* memory would keep back 28 GiB of an H200, even when all of it is free)
GPU_MARGIN_BYTES = 2 * 2**30
GPU_MARGIN_FRACTION = 0.1
# a fixed seed for the held-out test split of datasets that ship without one: the test set
# must be the same whatever the study's seed
TEST_SEED = 0
TEST_FRACTION = 0.2


# eq=False: tensors have no truth value to compare by, and a bundle hashes by identity
@dataclass(frozen=True, eq=False)
class Split:
    """Inputs and targets of one split. Images uint8 or float32 (N,C,H,W), tabular float32
    (N,F), sequences float32 (N,T,F) (unequal lengths padded at the end with NaN, which
    batches turn into 0: the feature mean), tokens int64 (N,T) (padding id 0); class labels
    int64 (N,), regression targets float32 (N,)."""

    base_x: Tensor
    base_y: Tensor
    # the rows of base_x/base_y that are this split (an index view: validation carving,
    # k-fold and final() make no copy of the data); None: all of them
    idx: Tensor | None = None

    @property
    def x(self) -> Tensor:
        """This split's inputs (a copy when the split is an index view: for inspection, not
        for the training path, which batches from ``base_x`` by index)."""
        return self.base_x if self.idx is None else self.base_x[self.idx]

    @property
    def y(self) -> Tensor:
        return self.base_y if self.idx is None else self.base_y[self.idx]

    @property
    def device(self) -> torch.device:
        return self.base_x.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_x.dtype

    def __len__(self) -> int:
        return self.base_x.shape[0] if self.idx is None else self.idx.shape[0]

    def __repr__(self) -> str:
        view = ", an index view" if self.idx is not None else ""
        return (f"Split({len(self)} samples, x {self.dtype} {tuple(self.base_x.shape[1:])}, "
                f"y {self.base_y.dtype}, on {self.device}{view})")

    def rows(self, i: Tensor | slice) -> Tensor | slice:
        """Positions ``i`` of this split as rows of ``base_x``."""
        return i if self.idx is None else self.idx[i]

    def to(self, device: torch.device, moved: dict[int, Tensor] | None = None) -> Split:
        """On ``device``; splits that share a base and pass one ``moved`` memo share it there."""
        memo = {} if moved is None else moved

        def move(t: Tensor) -> Tensor:
            if id(t) not in memo:
                memo[id(t)] = t.to(device)
            return memo[id(t)]

        return Split(move(self.base_x), move(self.base_y),
                     None if self.idx is None else self.idx.to(device))

    def take(self, i: Tensor) -> Split:
        """Positions ``i`` of this split, as an index view of the same base (no copy)."""
        return Split(self.base_x, self.base_y, self.rows(i.to(self.device)))


@dataclass(frozen=True, eq=False)
class DataBundle:
    """One dataset, split, with its normalisation statistics (from the train split only)."""

    train: Split
    val: Split | None
    test: Split | None
    input_shape: tuple[int, ...]  # one sample: (1, 28, 28) or (64,)
    num_outputs: int  # classes, or 1 for regression
    task: str  # "classification" | "regression"
    # per channel (1,C,1,1) for images, per feature (1,F) for tabular and (1,1,F) for
    # sequences, in the units of x/255 for uint8 images and of x otherwise; 0 and 1 for tokens
    mean: Tensor
    std: Tensor
    kind: InputKind = InputKind.tabular
    # regression targets are trained on as (y - y_mean) / y_std
    y_mean: float = 0.0
    y_std: float = 1.0
    name: str = "data"
    # set by to() when the data did not fit in GPU memory: the splits stay on the host and
    # each batch is gathered into pinned memory and copied here with non_blocking=True
    batch_device: torch.device | None = None
    # text data: the tokenization of the base rows (a ``tuner.data._text.TextView``), which
    # a trial's vocab_size / max_len may redo and retrain saves beside the model
    text: Any = None

    @property
    def inputs(self) -> Inputs:
        """What one sample is, as model builders receive it."""
        return Inputs(self.kind, self.input_shape)

    @property
    def device(self) -> torch.device:
        """Where batches come out (the training device)."""
        return self.batch_device if self.batch_device is not None else self.train.device

    def __repr__(self) -> str:
        sizes = "/".join(str(len(s)) if s is not None else "-"
                         for s in (self.train, self.val, self.test))
        return (f"DataBundle({self.name}: {self.task}, train/val/test {sizes}, {self.kind} "
                f"{self.input_shape}, {self.num_outputs} outputs, "
                f"{self.nbytes / 2**20:.1f} MiB, on {self.device})")

    @property
    def nbytes(self) -> int:
        # splits that are index views of one base count it once
        tensors = {id(t): t for s in self._splits() for t in (s.base_x, s.base_y, s.idx)
                   if t is not None}
        return sum(t.nbytes for t in tensors.values())

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
        device = canonical(device)
        if device.type == "cuda" and not _fits_on_gpu(self.nbytes, device):
            return self._staged(device)
        memo: dict[int, Tensor] = {}
        moved = {k: (s.to(device, memo) if s is not None else None)
                 for k, s in (("train", self.train), ("val", self.val), ("test", self.test))}
        return replace(self, **moved, mean=self.mean.to(device), std=self.std.to(device),
                       batch_device=None)

    def _staged(self, device: torch.device) -> DataBundle:
        """The fallback of :meth:`to`: host-resident splits, batches copied to ``device``."""
        cpu, memo = torch.device("cpu"), {}
        moved = {k: (s.to(cpu, memo) if s is not None else None)
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
        scale, shift = self._affine(s.dtype)
        if shuffle:
            order = torch.randperm(n, device=s.device, generator=generator)
        else:
            order = None
        for start in range(0, n, batch_size):
            if order is None and s.idx is None:
                xb, yb = s.base_x[start:start + batch_size], s.base_y[start:start + batch_size]
            else:
                part = slice(start, start + batch_size)
                rows = s.rows(part if order is None else order[part])
                xb, yb = _gather(s.base_x, rows, host), _gather(s.base_y, rows, host)
            if host:
                xb = xb.to(self.batch_device, non_blocking=True)
                yb = yb.to(self.batch_device, non_blocking=True)
            if self.kind == InputKind.tokens:
                yield xb, self.scale_targets(yb)
            elif self.kind == InputKind.sequence:
                # padded steps are stored as NaN and come out as 0, the feature means
                xb = (xb.float() * scale).sub_(shift).nan_to_num_(0.0)
                yield xb, self.scale_targets(yb)
            else:
                # not in place: xb may be a view of the stored split (unshuffled float data)
                yield (xb.float() * scale).sub_(shift), self.scale_targets(yb)

    def _affine(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """((x / 255) - mean) / std as x * scale - shift: one multiply, one subtract."""
        images = dtype == torch.uint8 and self.kind == InputKind.image
        scale = 1.0 / (255.0 * self.std) if images else 1.0 / self.std
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
        parts = [p.sort().values.to(pool.device) for p in perm.tensor_split(k)]
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
        fresh = make_bundle(self.name, self.task, train, val, test, self.num_outputs, self.kind)
        return replace(fresh, mean=fresh.mean.to(self.device), std=fresh.std.to(self.device),
                       batch_device=self.batch_device, text=self.text)


# ---- building bundles --------------------------------------------------------------------
def make_bundle(name: str, task: str, train: Split, val: Split | None, test: Split | None,
                num_outputs: int, kind: InputKind) -> DataBundle:
    """A bundle of ``kind`` samples with normalisation statistics computed on ``train``."""
    Inputs(kind, tuple(train.base_x.shape[1:]))  # the shape must fit the kind
    mean, std = _input_stats(train.x, kind)
    y_mean, y_std = 0.0, 1.0
    if task == "regression":
        y = train.y.double()
        y_mean = float(y.mean())
        y_std = float(y.std(correction=0)) if len(y) > 1 else 1.0
        y_std = y_std if y_std > 0 else 1.0
    return DataBundle(train=train, val=val, test=test, input_shape=tuple(train.base_x.shape[1:]),
                      num_outputs=num_outputs, task=task, mean=mean, std=std, kind=kind,
                      y_mean=y_mean, y_std=y_std, name=name)


def images_as_sequences(bundle: DataBundle) -> DataBundle:
    """Images (N,C,H,W) read row by row: sequences (N, H, W*C) of H steps, each step a row
    of pixels (channels interleaved per pixel), in units of x/255 for uint8 images and
    normalised per feature over all steps. Sequential MNIST is (N, 28, 28)."""

    def rows(s: Split) -> Split:
        x = s.x.float() / 255.0 if s.x.dtype == torch.uint8 else s.x.float()
        n, c, h, w = x.shape
        return Split(x.permute(0, 2, 3, 1).reshape(n, h, w * c).contiguous(), s.y)

    val, test = (rows(s) if s is not None else None for s in (bundle.val, bundle.test))
    return make_bundle(bundle.name, bundle.task, rows(bundle.train), val, test,
                       bundle.num_outputs, InputKind.sequence)


def _input_stats(x: Tensor, kind: InputKind) -> tuple[Tensor, Tensor]:
    """Mean and std, float32, shaped to broadcast over a batch: per channel for images (dim 1
    of N,C,H,W; for uint8 in units of x/255), per feature for tabular data (N,F), per feature
    over all steps for sequences (last dim of N,T,F); none for token ids. Float64 sums."""
    if kind == InputKind.tokens:
        return torch.zeros(()), torch.ones(())
    if kind == InputKind.image:
        channel, shape = 1, (1, x.shape[1], 1, 1)
    else:  # the feature axis is the last: (N,F) or (N,T,F)
        channel, shape = x.dim() - 1, (*[1] * (x.dim() - 1), x.shape[-1])
    if x.dtype == torch.uint8 and kind == InputKind.image:
        mean, var = _uint8_moments(x)
    elif kind == InputKind.sequence and bool(x.isnan().any()):
        # padded steps of unequal-length sequences are NaN: statistics of the real steps
        var, mean = _nan_moments(x.double().reshape(-1, x.shape[-1]))
    else:
        dims = [d for d in range(x.dim()) if d != channel]
        var, mean = torch.var_mean(x.double(), dim=dims, correction=0)
    std = var.clamp_min(0).sqrt()
    # a constant feature (digits has blank border pixels) is centred, not scaled up
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float().reshape(shape), std.float().reshape(shape)


def _nan_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column variance and mean of (M, F) ignoring NaN."""
    real = ~x.isnan()
    count = real.sum(0).clamp_min(1)
    mean = x.nan_to_num(0.0).sum(0) / count
    var = ((x - mean).nan_to_num(0.0).square()).sum(0) / count
    return var, mean


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


def _gather(t: Tensor, idx: Tensor, pinned: bool) -> Tensor:
    if not pinned or not torch.cuda.is_available():
        return t[idx]
    # a fresh pinned buffer per batch: the caching host allocator will not hand it out again
    # before the non_blocking copy that reads it has finished
    out = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, idx, out=out)


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes < free - gpu_margin(free)


def gpu_margin(free: int) -> float:
    """Bytes of ``free`` GPU memory kept back from the data (see GPU_MARGIN_BYTES)."""
    return max(GPU_MARGIN_BYTES, GPU_MARGIN_FRACTION * free)


def _concat(a: Split, b: Split | None) -> Split:
    """``a`` then ``b``: an index view when both view one base (carved train and val), else
    a copy."""
    if b is None:
        return a
    if a.base_x is b.base_x and a.base_y is b.base_y:
        return Split(a.base_x, a.base_y, torch.cat([_positions(a), _positions(b)]))
    return Split(torch.cat([a.x, b.x.to(a.x.device)]), torch.cat([a.y, b.y.to(a.y.device)]))


def _positions(s: Split) -> Tensor:
    return s.idx if s.idx is not None else torch.arange(len(s), device=s.device)


def carve(split: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """(train, val): a seeded ``fraction`` of ``split`` held out for validation (none when the
    fraction is 0, as for k-fold studies). Each part keeps the original order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1) (got {fraction})")
    n = len(split)
    n_val = min(max(round(n * fraction), 1), n - 1) if fraction > 0 else 0
    if n_val == 0:
        return split, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(split.device)
    return split.take(perm[n_val:].sort().values), split.take(perm[:n_val].sort().values)


def reason(e: BaseException) -> str:
    """The last line of an error, which names the cause (torchvision's download errors list
    each mirror tried, then why)."""
    lines = [line.strip(" <>") for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:120]
