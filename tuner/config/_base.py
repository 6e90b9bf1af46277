"""What every block of the study file shares: frozen pydantic models that refuse unknown
keys, and the scalar values a study file may hold."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

Scalar = str | int | float | bool


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)
