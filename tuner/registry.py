"""Named things a study file may choose, each registered once by the module that defines it.

Model families (:mod:`tuner.models`) and dataset sources (:mod:`tuner.data`) register
themselves here when their package is imported; spec validation, ``tuner check``, the
builders and the docs all read the same registry. Torch-free: an entry's heavy work runs
only when it is called.

    KNOBS = {"width": Knob(256, low=1, help="hidden units per layer")}
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Knob:
    """A hyperparameter that tuner's own code understands: its default and its valid values.

    ``low``/``high`` bound numbers (inclusive unless ``*_open``); ``choices`` lists the
    names a categorical knob accepts."""

    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    # a count (batch_size, freeze, ...): whole numbers only [default: an int default says so]
    integer: bool | None = None

    @property
    def counts(self) -> bool:
        if self.integer is not None:
            return self.integer
        return isinstance(self.default, int) and not isinstance(self.default, bool)

    def problem(self, name: str, value: Any) -> str | None:
        """Why ``value`` is not valid for the knob ``name`` (a phrase naming the fix), or None."""
        if self.choices is not None:
            if value not in self.choices:
                return (f"unknown {name} {value!r}{did_you_mean(str(value), self.choices)}; "
                        f"use one of {', '.join(self.choices)}")
            return None
        if self.low is None and self.high is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} must be a number (got {value!r})"
        if not math.isfinite(value):
            return f"{name} must be a finite number (got {value!r})"
        if self.counts and not isinstance(value, int):
            return f"{name} is a count: give a whole number (got {value!r})"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"{name} must be {'>' if self.low_open else '>='} {self.low:g} (got {value!r})"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"{name} must be {'<' if self.high_open else '<='} {self.high:g} (got {value!r})"
        return None


def did_you_mean(word: str, options: Sequence[str] | Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """Entries by name, in registration order. ``what`` names them in messages."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry, or KeyError whose message names the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        return (f"unknown {self.what} {name!r}{did_you_mean(name, self._entries)}; "
                f"use one of {', '.join(self._entries)}")

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())


def discover(package: str, path: Sequence[str]) -> None:
    """Import every public module of ``package`` so that each registers its entries: a new
    family or dataset is one new module, listed nowhere else."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
