"""Image datasets read by torchvision from its own folder layout under the data folder:
``mnist``, ``fashion_mnist`` and ``cifar10``, each with its official test split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.data import Request, Source, register
from tuner.errors import DataError
from tuner.kinds import InputKind

if TYPE_CHECKING:
    from tuner.data._bundle import DataBundle, Split

# name -> (torchvision class, folder under data_dir it reads, what belongs in that folder)
_SETS = {
    "mnist": ("MNIST", "MNIST/raw", "the four MNIST *-ubyte files",
              "handwritten digits, 28x28 greyscale, 60k train / 10k test"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", "the four Fashion-MNIST *-ubyte files",
                      "clothing, 28x28 greyscale, 60k train / 10k test"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                "the extracted CIFAR-10 python batches (data_batch_1..5, test_batch, ...)",
                "objects, 32x32 colour, 50k train / 10k test"),
}


def _loader(name: str) -> Any:
    def load(request: Request) -> DataBundle:
        from tuner.data._bundle import carve, make_bundle

        train, test = _read(name, Path(request.data_dir), request.download)
        train, val = carve(train, request.validation, request.seed)
        return make_bundle(name, "classification", train, val, test, 10, InputKind.image)

    return load


def _read(name: str, data_dir: Path, download: bool) -> tuple[Split, Split]:
    import torchvision.datasets  # noqa: PLC0415  (slow import, only for these datasets)

    cls_name, folder, contents, _ = _SETS[name]
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
            from tuner.data._bundle import reason

            raise DataError(
                f"{cls_name} not found in {where} and could not be downloaded ({reason(e)}); "
                f"put {contents} there or set TUNER_DATA_DIR to a folder that has them"
            ) from None
    return _split(parts[0]), _split(parts[1])


def _split(ds: Any) -> Split:
    import torch

    from tuner.data._bundle import Split

    x = torch.as_tensor(ds.data)
    if x.dim() == 3:  # MNIST: (N, H, W) -> (N, 1, H, W)
        x = x.unsqueeze(1)
    elif x.shape[-1] == 3:  # CIFAR-10 ships (N, H, W, C) numpy
        x = x.permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.as_tensor(ds.targets, dtype=torch.int64))


for _name, (*_, _summary) in _SETS.items():
    register(Source(_name, "classification", InputKind.image, _summary, _loader(_name)))
