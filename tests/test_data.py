"""Datasets as tensors: splits, normalisation, batches, folds, user loaders, missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from tuner.data import DataBundle, Split, from_user, load_builtin
from tuner.errors import DataError


def _rows(x: torch.Tensor) -> set[bytes]:
    """Each sample as bytes: the tiny images are all distinct, so rows identify samples."""
    return {r.numpy().tobytes() for r in x.flatten(1)}


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> DataBundle:
    return load_builtin("mnist", mnist_dir, validation=0.1, seed=0, download=False)


def test_mnist_shapes_and_dtypes(mnist: DataBundle) -> None:
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (540, 60, 200)
    assert mnist.train.x.dtype == torch.uint8 and mnist.train.x.shape[1:] == (1, 28, 28)
    assert mnist.train.y.dtype == torch.int64
    assert mnist.input_shape == (1, 28, 28) and mnist.num_outputs == 10
    assert mnist.task == "classification" and mnist.name == "mnist"
    assert mnist.mean.shape == mnist.std.shape == (1, 1, 1, 1)
    assert mnist.device == torch.device("cpu")


def test_validation_split_is_disjoint_and_seeded(mnist_dir: Path, mnist: DataBundle) -> None:
    train, val = _rows(mnist.train.x), _rows(mnist.val.x)
    assert not train & val and len(train | val) == 600
    assert not (train | val) & _rows(mnist.test.x)
    again = load_builtin("mnist", mnist_dir, validation=0.1, seed=0, download=False)
    assert torch.equal(again.val.x, mnist.val.x) and torch.equal(again.train.y, mnist.train.y)
    other = load_builtin("mnist", mnist_dir, validation=0.1, seed=1, download=False)
    assert _rows(other.val.x) != val
    assert torch.equal(other.test.x, mnist.test.x)  # the test set never depends on the seed


def test_normalisation_uses_the_train_split_only(mnist: DataBundle) -> None:
    pixels = mnist.train.x.double() / 255
    assert mnist.mean.item() == pytest.approx(pixels.mean().item(), rel=1e-5)
    assert mnist.std.item() == pytest.approx(pixels.std(correction=0).item(), rel=1e-5)
    x = torch.cat([xb for xb, _ in mnist.batches("train", 1000, shuffle=False)])
    assert x.dtype == torch.float32
    assert x.mean().item() == pytest.approx(0, abs=1e-4)
    assert x.std(correction=0).item() == pytest.approx(1, abs=1e-4)


def test_batches_keep_the_last_one_and_shuffle_by_generator(mnist: DataBundle) -> None:
    def order(seed: int) -> tuple[list[int], torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        batches = list(mnist.batches("train", 128, shuffle=True, generator=g))
        return [len(y) for _, y in batches], torch.cat([x for x, _ in batches])

    sizes, x = order(0)
    assert sizes == [128, 128, 128, 128, 28]
    plain = torch.cat([xb for xb, _ in mnist.batches("train", 128, shuffle=False)])
    assert not torch.equal(x, plain)  # shuffled ...
    assert torch.equal(x.sort(dim=0).values, plain.sort(dim=0).values)  # ... a permutation
    assert torch.equal(order(0)[1], x) and not torch.equal(order(1)[1], x)


def test_batches_match_plain_normalisation(mnist: DataBundle) -> None:
    xb, yb = next(mnist.batches(mnist.val, 1000, shuffle=False))
    expected = (mnist.val.x.float() / 255 - mnist.mean) / mnist.std
    torch.testing.assert_close(xb, expected)
    assert torch.equal(yb, mnist.val.y)


def test_host_staged_bundle_gives_the_same_batches(mnist: DataBundle) -> None:
    # the fallback for data too big for the GPU, exercised on the CPU
    staged = mnist._staged(torch.device("cpu"))
    assert staged.batch_device == torch.device("cpu") and staged.device == torch.device("cpu")
    a = list(mnist.batches("train", 100, shuffle=True, generator=torch.Generator().manual_seed(0)))
    b = list(staged.batches("train", 100, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert len(a) == len(b) == 6
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2)
               for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    assert mnist.to("cpu").device == torch.device("cpu")


def test_fashion_mnist_loads(mnist_dir: Path) -> None:
    b = load_builtin("fashion_mnist", mnist_dir, validation=0.2, seed=0, download=False)
    assert (len(b.train), len(b.val), len(b.test)) == (480, 120, 200)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"),
                                              ("fashion_mnist", "FashionMNIST/raw"),
                                              ("cifar10", "cifar-10-batches-py")])
def test_missing_files_say_where_to_put_them(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataError) as err:
        load_builtin(name, tmp_path, validation=0.1, seed=0, download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / folder) in msg and "TUNER_DATA_DIR" in msg


@pytest.mark.parametrize(("name", "sizes", "features", "outputs"), [
    ("digits", (1294, 144, 359), 64, 10),
    ("moons", (1800, 200, 500), 2, 2),
    ("diabetes", (319, 35, 88), 10, 1),
])
def test_sklearn_datasets(name: str, sizes: tuple[int, int, int], features: int,
                          outputs: int) -> None:
    b = load_builtin(name, "unused", validation=0.1, seed=0)
    assert (len(b.train), len(b.val), len(b.test)) == sizes
    assert b.input_shape == (features,) and b.num_outputs == outputs
    assert b.train.x.dtype == torch.float32 and b.mean.shape == (1, features)
    if name == "diabetes":
        assert b.task == "regression" and b.train.y.dtype == torch.float32
        assert b.y_mean == pytest.approx(b.train.y.double().mean().item())
        y = torch.cat([yb for _, yb in b.batches("train", 64, shuffle=False)])
        assert y.mean().item() == pytest.approx(0, abs=1e-5)
    else:
        assert b.task == "classification" and b.train.y.dtype == torch.int64
    other = load_builtin(name, "unused", validation=0.1, seed=5)
    assert torch.equal(other.test.x, b.test.x)


def test_moons_are_scikit_learns_numbers_without_importing_it() -> None:
    """moons is generated in numpy (a worker process skips importing scikit-learn): the
    same samples, labels and order as make_moons with the same seed and noise."""
    import sklearn.datasets

    from tuner.data.sklearn_sets import _moons

    for n, noise, seed in ((2500, 0.25, 0), (7, 0.1, 3)):
        x, y = _moons(n, noise, seed)
        want_x, want_y = sklearn.datasets.make_moons(n_samples=n, noise=noise, random_state=seed)
        assert np.array_equal(x, want_x) and np.array_equal(y, want_y) and y.dtype == want_y.dtype


def test_batches_leave_the_stored_float_data_alone() -> None:
    b = load_builtin("moons", "unused", validation=0.1, seed=0)
    before = b.val.x.clone()
    first = [x for x, _ in b.batches("val", 64, shuffle=False)]
    second = [x for x, _ in b.batches("val", 64, shuffle=False)]
    assert torch.equal(b.val.x, before)
    assert all(torch.equal(x1, x2) for x1, x2 in zip(first, second, strict=True))


def test_digits_constant_pixels_are_not_divided_by_zero() -> None:
    b = load_builtin("digits", "unused", validation=0.1, seed=0)
    x, _ = next(b.batches("val", 1000, shuffle=False))
    assert torch.isfinite(x).all()


def _xy(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), rng.integers(0, 4, size=n)


class _PairDataset(Dataset):
    def __init__(self, n: int):
        self.x, self.y = (torch.as_tensor(a) for a in _xy(n))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


@pytest.mark.parametrize("kind", ["tuple2", "tuple3", "dict", "dict_no_val", "datasets"])
def test_from_user_accepts_tuples_dicts_and_datasets(kind: str) -> None:
    train, val, test = _xy(100), _xy(20, 1), _xy(30, 2)
    result = {
        "tuple2": (train, val),
        "tuple3": (train, val, tuple(torch.as_tensor(a) for a in test)),
        "dict": {"train": train, "val": val, "test": test},
        "dict_no_val": {"train": train},
        "datasets": (_PairDataset(100), TensorDataset(*map(torch.as_tensor, val))),
    }[kind]
    b = from_user(result, "classification", validation=0.2, seed=0, name="mine")
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    assert b.input_shape == (3,) and b.num_outputs == 4 and b.name == "mine"
    assert len(b.val) == 20 and len(b.train) == (80 if kind == "dict_no_val" else 100)
    assert (b.test is not None) == (kind in ("tuple3", "dict"))


def test_from_user_regression_and_images() -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(50, 8, 8), dtype=np.uint8)
    y = np.linspace(0, 10, 50).reshape(50, 1)
    b = from_user({"train": (x, y)}, "regression", validation=0.2, seed=0, name="imgs")
    assert b.train.x.dtype == torch.uint8 and b.input_shape == (1, 8, 8)
    assert b.train.y.shape == (40,) and b.num_outputs == 1 and b.y_std > 0


class _PilLike(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[object, int]:
        return object(), i


@pytest.mark.parametrize("junk", [
    "a string",
    _xy(10),  # one (X, y) pair, not splits
    {"train": _xy(10), "valid": _xy(5)},
    ((np.zeros((10, 3)), np.zeros(9)), _xy(5)),
    (_PilLike(), _xy(5)),
    ((np.zeros((10, 3)), np.full(10, 0.5)), _xy(5)),
])
def test_from_user_rejects_junk_in_one_line(junk: object) -> None:
    with pytest.raises(DataError) as err:
        from_user(junk, "classification", validation=0.2, seed=0, name="mine")
    assert "\n" not in str(err.value) and str(err.value).startswith("mine")


def test_folds_partition_train_and_val() -> None:
    b = load_builtin("digits", "unused", validation=0.1, seed=0)
    pool = _rows(torch.cat([b.train.x, b.val.x]))
    folds = b.folds(5, seed=0)
    vals = [_rows(f.val.x) for f in folds]
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)
    for f, v in zip(folds, vals, strict=True):
        assert not _rows(f.train.x) & v and len(f.train) + len(f.val) == len(pool)
        torch.testing.assert_close(f.mean, f.train.x.mean(dim=0, keepdim=True))
        assert torch.equal(f.test.x, b.test.x)
    assert [len(v) for v in vals] == [len(f.val) for f in b.folds(5, seed=0)]


def test_final_trains_on_train_and_val_and_evaluates_on_test(mnist: DataBundle) -> None:
    f = mnist.final()
    assert len(f.train) == 600 and f.test is None
    assert torch.equal(f.val.x, mnist.test.x)
    no_test = DataBundle(train=mnist.train, val=mnist.val, test=None, input_shape=(1, 28, 28),
                         num_outputs=10, task="classification", mean=mnist.mean, std=mnist.std)
    with pytest.raises(DataError, match="no test split"):
        no_test.final()


def test_split_len() -> None:
    assert len(Split(torch.zeros(7, 2), torch.zeros(7))) == 7


def test_validation_folds_and_final_are_index_views_not_copies() -> None:
    """k-fold and final() keep one copy of the data (issue 15: they kept k+1, then one more)."""
    b = load_builtin("digits", "unused", validation=0.1, seed=0)
    base = b.train.base_x
    assert b.val.base_x is base  # carving the validation split made a view
    folds = b.folds(5, seed=0)
    assert all(f.train.base_x is base and f.val.base_x is base for f in folds)
    assert b.final().train.base_x is base
    assert all(f.nbytes < 1.1 * b.nbytes for f in folds)  # the base once, plus row indices
    moved = b.to("cpu")
    assert moved.train.base_x is moved.val.base_x  # moving keeps them sharing one base
    # a batch of a view is exactly its rows
    xb, yb = next(folds[0].batches("val", 7, shuffle=False))
    torch.testing.assert_close(yb, folds[0].val.y[:7])
