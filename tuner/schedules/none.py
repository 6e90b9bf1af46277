"""No schedule: every trial trains its full epochs."""

from __future__ import annotations

from tuner.schedules import register
from tuner.schedules._base import Schedule


class NoSchedule(Schedule):
    name = "none"
    summary = "every trial trains its full epochs"


register(NoSchedule)
