"""The state_dict files a study's trials may start from: the study's ``weights:`` path or
the space's ``weights`` values, relative to the study file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.config.params import CategoricalParam, Fixed

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec


def paths(spec: StudySpec) -> list[str | None]:
    """Every ``weights`` a trial may start from: the space's values, else the study's
    (None: the model's own initialisation); a ValueError when the space gives no paths."""
    entry = spec.space.get("weights")
    if entry is None:
        return [spec.weights]
    values = ([entry.value] if isinstance(entry, Fixed) else list(entry.choices)
              if isinstance(entry, CategoricalParam) else None)
    if values is None or not all(isinstance(v, str) and v for v in values):
        raise ValueError("space.weights: give the path of a state_dict file, or a list of "
                         "paths, relative to the study file")
    return list(values)
