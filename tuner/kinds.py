"""What one sample of a dataset is: its kind and shape. Data sets it, models and
normalisation read it, so nothing guesses from the number of dimensions.

    image      (C, H, W), uint8 or float; normalised per channel
    tabular    (F,) float; normalised per feature
    sequence   (T, F) float, steps by features; normalised per feature over all steps
    tokens     (T,) integer ids; not normalised
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class InputKind(StrEnum):
    image = "image"
    tabular = "tabular"
    sequence = "sequence"
    tokens = "tokens"


@dataclass(frozen=True)
class Inputs:
    """One sample's kind and shape, as a model builder receives it."""

    kind: InputKind
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        want = {InputKind.image: 3, InputKind.tabular: 1, InputKind.sequence: 2,
                InputKind.tokens: 1}[self.kind]
        if len(self.shape) != want:
            raise ValueError(f"{self.kind} samples have {want} dimensions, not shape {self.shape}")
