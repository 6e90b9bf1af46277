"""Small tabular datasets that ship with scikit-learn (no download): ``digits``, ``moons``
and ``diabetes``. Those without a test split get a fixed one (seed ``TEST_SEED``), the same
whatever the study's seed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.data import Request, Source, register
from tuner.kinds import InputKind

if TYPE_CHECKING:
    from tuner.data._bundle import DataBundle

TEST_SEED = 0
TEST_FRACTION = 0.2

_SETS = {
    "digits": ("classification", "8x8 handwritten digits as 64 features, 1797 samples"),
    "moons": ("classification", "two interleaving half circles, 2 features, 2000 + 500 samples"),
    "diabetes": ("regression", "disease progression from 10 features, 442 samples"),
}


def _read(name: str) -> tuple[Any, Any]:
    if name == "moons":
        return _moons(2500, 0.25, TEST_SEED)
    import sklearn.datasets  # noqa: PLC0415

    if name == "digits":
        return sklearn.datasets.load_digits(return_X_y=True)
    return sklearn.datasets.load_diabetes(return_X_y=True)


def _moons(n: int, noise: float, seed: int) -> tuple[Any, Any]:
    """``sklearn.datasets.make_moons(n, noise=noise, random_state=seed)``, the same numbers,
    without importing scikit-learn (seconds of start-up in every worker process)."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.RandomState(seed)
    out, inner = n // 2, n - n // 2
    x = np.vstack([np.append(np.cos(np.linspace(0, np.pi, out)),
                             1 - np.cos(np.linspace(0, np.pi, inner))),
                   np.append(np.sin(np.linspace(0, np.pi, out)),
                             1 - np.sin(np.linspace(0, np.pi, inner)) - 0.5)]).T
    y = np.hstack([np.zeros(out, dtype=np.intp), np.ones(inner, dtype=np.intp)])
    order = np.arange(n)
    rng.shuffle(order)
    x, y = x[order], y[order]
    return x + rng.normal(scale=noise, size=x.shape), y


def _loader(name: str) -> Any:
    task = _SETS[name][0]

    def load(request: Request) -> DataBundle:
        import torch

        from tuner.data._bundle import Split, carve, make_bundle

        x, y = _read(name)
        y_dtype = torch.float32 if task == "regression" else torch.int64
        data = Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=y_dtype))
        if name == "moons":  # generated as 2000 train + 500 test samples
            train, test = Split(data.x[:2000], data.y[:2000]), Split(data.x[2000:], data.y[2000:])
        else:
            train, test = carve(data, TEST_FRACTION, TEST_SEED)
        train, val = carve(train, request.validation, request.seed)
        num_outputs = 1 if task == "regression" else int(data.y.max()) + 1
        return make_bundle(name, task, train, val, test, num_outputs, InputKind.tabular)

    return load


for _name, (_task, _summary) in _SETS.items():
    register(Source(_name, _task, InputKind.tabular, _summary, _loader(_name)))
