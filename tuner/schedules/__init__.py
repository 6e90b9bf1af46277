"""Schedules: when a trial goes on, pauses or stops, and what a worker does with paused
trials; one module per schedule, each registering itself.

    from tuner import schedules
    sched = schedules.of(spec)          # the study's schedule (its pruner: or scheduler: block)
    sched.pruner()                      # the Optuna pruner its trials report to
    sched.verdict(lineage, epoch, value, pruned=True)   # Verdict.PAUSE at an ASHA rung
    for decision in sched.decisions(view): ...          # handed to tuner.storage.record_first

A schedule module (``tuner/schedules/NAME.py``) defines a subclass of :class:`Schedule` and
calls :func:`register` with it. ``pruner: {name: NAME}`` picks a schedule of the ``pruner``
block (independent trials: median, successive_halving, hyperband, asha, ...);
``scheduler: {name: NAME}`` one of the ``scheduler`` block (a population: pbt, ...). Nothing
else lists schedules: spec validation, the runner, the worker, status, report and retrain
ask the schedule. Importing this package imports neither torch nor Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.registry import Registry, discover
from tuner.schedules._base import (
    PAUSED_ATTR,
    PBT_ATTR,
    PROMOTION_OF_ATTR,
    RETIRED,
    Continuation,
    Decision,
    PrunerSpec,
    Schedule,
    Verdict,
    View,
    is_paused,
    is_promotion,
    latest,
)

if TYPE_CHECKING:
    from tuner.config import StudySpec

__all__ = ["PAUSED_ATTR", "PBT_ATTR", "PROMOTION_OF_ATTR", "RETIRED", "SCHEDULES",
           "Continuation", "Decision", "PrunerSpec", "Schedule", "Verdict", "View", "defaults",
           "get", "is_paused", "is_promotion", "latest", "names", "of", "register"]

SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


def register(cls: type[Schedule]) -> type[Schedule]:
    SCHEDULES.register(cls.name, cls)
    return cls


def get(name: str) -> type[Schedule]:
    return SCHEDULES.get(name)


def names(block: str | None = None) -> tuple[str, ...]:
    """The registered schedules (of the study-file block ``pruner`` or ``scheduler``)."""
    return tuple(c.name for c in SCHEDULES if block is None or c.block == block)


def of(spec: StudySpec) -> Schedule:
    """The study's schedule: its ``scheduler:`` block if it has one, else its ``pruner:``."""
    block = spec.scheduler if spec.scheduler is not None else spec.pruner
    return get(block.name)(spec)


def defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """The raw study file with a ``scheduler:`` given as a word made a mapping, and that
    schedule's defaults for other keys (e.g. PBT: the population is the trial budget)."""
    sched = raw.get("scheduler")
    if sched is None:
        return raw
    if isinstance(sched, str):
        sched = {"name": sched}
    if not isinstance(sched, dict):
        raise ValueError("scheduler: give a mapping, e.g. scheduler: {name: pbt, population: 8}")
    raw = {**raw, "scheduler": sched}
    name = sched.get("name")
    if isinstance(name, str) and name in names("scheduler"):
        raw = get(name).defaults(raw)
    return raw


discover(__name__, __path__)

# the ``scheduler:`` block, which the population schedules (pbt and those built on it) share
from tuner.schedules.pbt import SchedulerSpec  # noqa: E402

__all__ += ["SchedulerSpec"]
