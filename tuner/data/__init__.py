"""Datasets, one module per source, each registering itself; and the bundle they load into.

    from tuner import data
    data.names()                                          # ("mnist", ..., "diabetes")
    bundle = data.load("mnist", data.Request("data", validation=0.1, seed=0))
    bundle.to("cuda")                                     # kept on the device, batched by index

A source module (``tuner/data/NAME.py``) calls :func:`register` with a :class:`Source`: its
name, task, input kind, a summary and a loader. Nothing else lists datasets. A user's own
loader (``data: file.py:load``) goes through :func:`from_user`.
Importing this package does not import torch; loading data does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.errors import DataError
from tuner.kinds import InputKind
from tuner.registry import Registry, discover
from tuner.settings import DEFAULT_DATA_DIR

if TYPE_CHECKING:
    from tuner.data._bundle import DataBundle, Split

__all__ = ["DataBundle", "Request", "Source", "Split", "claim_prefix", "from_user", "get", "load",
           "load_builtin", "names", "register", "unknown_prefixed", "SOURCES"]


@dataclass(frozen=True)
class Request:
    """What a loader needs: where datasets live, the validation fraction carved out of the
    training set, the seed of that split, and whether a missing dataset may be downloaded."""

    data_dir: str = DEFAULT_DATA_DIR
    validation: float = 0.1
    seed: int = 0
    download: bool = True
    # the study's ``data: {as: KIND}`` for a built-in source: image sources may be read as
    # sequences (rows as steps: sequential MNIST); None reads the source's own kind
    read_as: InputKind | None = None
    # a source's own options from the study file (text data: its TextOptions)
    options: Any = None


# source kind -> the other kinds its samples may be read as
READINGS = {InputKind.image: (InputKind.sequence,)}


@dataclass(frozen=True)
class Source:
    name: str
    task: str  # classification | regression
    kind: InputKind
    summary: str
    # -> a bundle on the CPU, train/val carved with the request's fraction and seed
    load: Callable[[Request], DataBundle]


SOURCES: Registry[Source] = Registry("dataset")


def register(source: Source) -> Source:
    return SOURCES.register(source.name, source)


def get(name: str) -> Source:
    return SOURCES.get(name)


def names() -> tuple[str, ...]:
    return SOURCES.names()


# name prefixes that a source module registers its names under (``uea:``) -> why a name
# under the prefix is not a dataset here (the set is not shipped, its package is missing)
_PREFIXES: dict[str, Callable[[str], str]] = {}


def claim_prefix(prefix: str, unknown: Callable[[str], str]) -> None:
    """Say that the names under ``prefix`` are this source module's, and how to explain one
    that it did not register."""
    _PREFIXES[prefix] = unknown


def unknown_prefixed(name: str) -> str | None:
    """Why ``name``, under a prefix a source module claimed, is not a dataset here (None: not
    under a claimed prefix, or registered)."""
    if name in SOURCES:
        return None
    return next((why(name) for prefix, why in _PREFIXES.items() if name.startswith(prefix)),
                None)


def load(name: str, request: Request) -> DataBundle:
    """The built-in dataset ``name`` on the CPU."""
    if name not in SOURCES:
        raise DataError(SOURCES.unknown(name))
    source = get(name)
    bundle = source.load(request)
    if request.read_as is None or request.read_as == source.kind:
        return bundle
    if request.read_as not in READINGS.get(source.kind, ()):
        raise DataError(f"{name} is {source.kind} data and cannot be read as {request.read_as}")
    from tuner.data._bundle import images_as_sequences

    return images_as_sequences(bundle)


def load_builtin(name: str, data_dir: str = DEFAULT_DATA_DIR, *, validation: float, seed: int,
                 download: bool = True) -> DataBundle:
    return load(name, Request(str(data_dir), validation, seed, download))


def __getattr__(name: str) -> Any:
    # the torch-side names, imported on first use so that validating a study stays light
    if name in ("DataBundle", "Split", "make_bundle", "carve"):
        from tuner.data import _bundle

        return getattr(_bundle, name)
    if name == "from_user":
        from tuner.data._user import from_user

        return from_user
    raise AttributeError(f"module 'tuner.data' has no attribute {name!r}")


discover(__name__, __path__)
