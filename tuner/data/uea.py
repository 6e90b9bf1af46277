"""Time-series classification sets of the UEA/UCR archive that the ``aeon`` package ships
inside its wheel (``aeon/datasets/data/NAME/NAME_TRAIN.ts``), read offline:
``data: uea:JapaneseVowels``, ``uea:BasicMotions``, ``uea:GunPoint`` ...

Official train/test splits; the validation part is carved from the train split. Samples
are sequences (T steps, F channels); sets of unequal length are padded at the end (NaN in
the split, 0 after normalisation: see :mod:`tuner.data._bundle`), and the recurrent and 1-D
convolutional families skip those steps. Class labels become 0..C-1 in sorted order.
Never downloads: only what the installed aeon holds is listed.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.data import Request, Source, claim_prefix, register
from tuner.errors import DataError
from tuner.kinds import InputKind
from tuner.registry import did_you_mean

if TYPE_CHECKING:
    from tuner.data._bundle import DataBundle, Split

PREFIX = "uea:"


@cache
def data_folder() -> Path | None:
    """aeon's bundled data folder, found without importing aeon (slow, and heavy)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return folder if folder.is_dir() else None


@cache
def offline_sets() -> tuple[str, ...]:
    """The classification sets with both official splits in the installed aeon."""
    folder = data_folder()
    if folder is None:
        return ()
    return tuple(sorted(d.name for d in folder.iterdir()
                        if (d / f"{d.name}_TEST.ts").is_file()
                        and _classifies(d / f"{d.name}_TRAIN.ts")))


def _classifies(path: Path) -> bool:
    """A .ts file of a classification set: its header says ``@classLabel true ...`` (the
    regression sets aeon ships say ``@targetLabel``)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                low = line.strip().lower()
                if low.startswith("@classlabel"):
                    return low.split()[1:2] == ["true"]
                if low.startswith("@data"):
                    return False
    except OSError:
        return False
    return False


def unknown(name: str) -> str:
    """One line for a ``uea:`` name the installed aeon does not ship."""
    sets = offline_sets()
    if not sets:
        return (f"{name}: the UEA/UCR sets come from the aeon package, which is not installed; "
                "pip install 'aeon==1.6.*'")
    bare = name.removeprefix(PREFIX)
    return (f"unknown UEA set {bare!r}{did_you_mean(bare, sets)}; the sets available offline "
            f"are {', '.join(PREFIX + s for s in sets)}")


def _loader(set_name: str) -> Any:
    def load(request: Request) -> DataBundle:
        from tuner.data._bundle import carve, make_bundle

        train, test, classes = read(set_name)
        train, val = carve(train, request.validation, request.seed)
        return make_bundle(PREFIX + set_name, "classification", train, val, test, classes,
                           InputKind.sequence)

    return load


def read(set_name: str) -> tuple[Split, Split, int]:
    """(train, test, number of classes), the sequences (N, T, F) float32 padded with NaN to
    the longest sample of either split."""
    folder = data_folder()
    if folder is None:
        raise DataError(unknown(PREFIX + set_name))
    parts = []
    for split in ("TRAIN", "TEST"):
        path = folder / set_name / f"{set_name}_{split}.ts"
        try:
            parts.append(read_ts(path))
        except (OSError, ValueError) as e:
            raise DataError(f"{PREFIX}{set_name}: cannot read {path} ({e})") from None
    classes = sorted(set(parts[0][1].tolist()) | set(parts[1][1].tolist()))
    longest = max(s.shape[-1] for xs, _ in parts for s in xs)
    splits = [_split(xs, y, classes, longest) for xs, y in parts]
    return splits[0], splits[1], len(classes)


def read_ts(path: Path) -> tuple[list[Any], Any]:
    """A .ts file of the archive -> ([(channels, length) float32 arrays], labels): after the
    ``@data`` line, one sample per line, channels separated by ``:``, values by ``,``, the
    class label last; ``?`` is a missing value. Parsed here, not by aeon, whose import (numba,
    pandas) takes seconds."""
    import numpy as np

    xs, ys = [], []
    data = False
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not data:
                data = line.lower().startswith("@data")
                continue
            *channels, label = line.split(":")
            rows = [[float("nan") if v == "?" else float(v) for v in c.split(",")]
                    for c in channels]
            if len({len(r) for r in rows}) != 1:
                raise ValueError(f"sample {len(xs) + 1} has channels of different lengths")
            xs.append(np.asarray(rows, dtype=np.float32))
            ys.append(label.strip())
    if not xs:
        raise ValueError("no samples after @data")
    return xs, np.asarray(ys)


def _split(xs: list[Any], y: Any, classes: list[Any], longest: int) -> Split:
    import numpy as np
    import torch

    from tuner.data._bundle import Split

    channels = xs[0].shape[0]
    out = np.full((len(xs), longest, channels), np.nan, dtype=np.float32)
    for i, s in enumerate(xs):  # aeon gives (channels, length) per sample
        out[i, : s.shape[-1]] = s.T
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[v] for v in y.tolist()], dtype=torch.int64)
    return Split(torch.from_numpy(out), labels)


def _summary(set_name: str) -> str:
    return f"UEA/UCR time-series classification set {set_name} (aeon's copy, official splits)"


for _set in offline_sets():
    register(Source(PREFIX + _set, "classification", InputKind.sequence, _summary(_set),
                    _loader(_set)))
claim_prefix(PREFIX, unknown)
