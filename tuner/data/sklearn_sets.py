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
    import sklearn.datasets  # noqa: PLC0415

    if name == "digits":
        return sklearn.datasets.load_digits(return_X_y=True)
    if name == "moons":
        return sklearn.datasets.make_moons(n_samples=2500, noise=0.25, random_state=TEST_SEED)
    return sklearn.datasets.load_diabetes(return_X_y=True)


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
