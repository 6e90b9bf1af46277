"""The interface a schedule implements, and the data it hands out.

A schedule decides; it never executes. In the trial it turns the pruner's "stop here" into a
verdict (:class:`Verdict`: go on, pause for a later decision, or stop) and names the epochs
whose checkpoint is kept as a snapshot. When a worker asks for work it returns
:class:`Decision` s (ledger rows, and the WAITING continuations to enqueue with them), which
the worker hands to storage (:func:`tuner.storage.record_first`) without knowing which
schedule made them. After the search it describes each segment (``e4: weights of member
3``) and the segments ``tuner retrain`` replays.

Torch-free and Optuna-free at import (spec validation reads the blocks and the checks);
Optuna is imported only by :meth:`Schedule.pruner` and the ranking code that runs in a
worker.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuner.gate import MAX_COUNT
from tuner.registry import did_you_mean
from tuner.trial_schema import PAUSED_ATTR, PROMOTION_OF_ATTR, lineage
from tuner.trial_schema import PBT_ATTR as PBT_ATTR  # re-exported with the others

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from tuner.config import StudySpec

RETIRED = -1  # ``trial`` of a ledger row that retires its lineage at that rung


class Verdict(enum.Enum):
    """What a trial does after an epoch's report."""

    CONTINUE = "continue"
    PAUSE = "pause"  # end the segment, keep the checkpoint: a later decision may continue it
    STOP = "stop"  # pruned for good


@dataclass(frozen=True)
class Continuation:
    """A WAITING trial to enqueue: lineage ``lineage`` goes on from its paused segment (trial
    ``of``) with ``params``; ``curve`` is its learning curve so far (kept whole); ``record``
    is stored as the user attr ``pbt`` when given."""

    lineage: int
    of: int
    params: Mapping[str, Any]
    distributions: Mapping[str, Any]
    curve: Mapping[int, float]
    record: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """What one worker wins at once: ledger ``rows`` (lineage, rung, trial), whose primary
    key lets only one worker insert them, the ``continuations`` enqueued in the same
    transaction, and the lineages whose checkpoints may go once it is recorded."""

    rows: tuple[tuple[int, int, int], ...]
    continuations: tuple[Continuation, ...] = ()
    frees: tuple[int, ...] = ()


class View:
    """What a schedule may read when a worker asks for work: each read once, and only if
    the schedule asks (a median study reads nothing)."""

    def __init__(self, trials: Callable[[], list[FrozenTrial]],
                 decided: Callable[[], set[tuple[int, int]]], budget: Callable[[], Any],
                 final: bool = False):
        self._trials, self._decided, self._budget, self.final = trials, decided, budget, final

    @cached_property
    def trials(self) -> list[FrozenTrial]:
        return self._trials()

    @cached_property
    def decided(self) -> set[tuple[int, int]]:
        """The (lineage, rung) rows of the decisions ledger."""
        return self._decided()

    @cached_property
    def budget(self) -> Any:
        """The study's :class:`~tuner.storage.BudgetState`."""
        return self._budget()

    @cached_property
    def latest(self) -> dict[int, FrozenTrial]:
        """The last trial of each lineage (its segments and retries share the lineage)."""
        return latest(self.trials)


class _Block(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _known(block: str, v: Any) -> Any:
    from tuner.schedules import names

    if isinstance(v, str) and v not in names(block):
        options = names(block)
        raise ValueError(f"unknown value {v!r}{did_you_mean(v, options)}; use one of "
                         + ", ".join(repr(o) for o in options))
    return v


class PrunerSpec(_Block):
    """The ``pruner:`` block: schedules of independent trials (``name`` is one of the
    schedules registered for this block: median, successive_halving, hyperband, asha, ...)."""

    name: str = "median"
    # trials that always run to the end before the median pruner judges others
    n_startup_trials: int = Field(default=5, ge=0, le=MAX_COUNT)
    # epochs every trial runs before it may be pruned (median), or the smallest budget (SHA/HB)
    min_epochs: int = Field(default=1, ge=1)
    reduction_factor: int = Field(default=3, ge=2)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _known("pruner", v)


class Schedule:
    """One schedule: built from the study's spec, asked by the runner and the worker.

    The default is a schedule of independent trials that an Optuna pruner stops: nothing
    pauses, nothing is decided between trials, nothing is replayed."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    block: ClassVar[str] = "pruner"  # the study-file key whose ``name:`` picks it
    # members are one population: the trial budget is its size, identical configurations are
    # not reused, and each segment is described per member
    population: ClassVar[bool] = False
    keeps_snapshots: ClassVar[bool] = False  # snapshots exist until the study is over

    def __init__(self, spec: StudySpec):
        self.spec = spec

    @property
    def maximize(self) -> bool:
        return self.spec.direction_name == "maximize"

    # ---- the study file ----------------------------------------------------------------
    @classmethod
    def defaults(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The raw study file with this schedule's defaults for other keys (before checks)."""
        return raw

    def check(self) -> None:
        """Raise ValueError naming the fix when the rest of the study does not fit."""

    def fuse_blocker(self) -> str | None:
        """Why the study's trials cannot be trained as one stacked model (None: they can)."""
        return None

    # ---- in the trial ------------------------------------------------------------------
    def pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.NopPruner()

    def pause_epochs(self, lineage: int) -> Sequence[int]:
        """The epochs where the lineage's segment pauses instead of being pruned."""
        return ()

    def verdict(self, lineage: int, epoch: int, value: float, pruned: bool) -> Verdict:
        """After the report of ``epoch``; ``pruned``: the pruner said stop."""
        if not pruned:
            return Verdict.CONTINUE
        if math.isfinite(value) and epoch in self.pause_epochs(lineage):
            return Verdict.PAUSE
        return Verdict.STOP

    def snapshot_epochs(self, lineage: int) -> Sequence[int]:
        """Epochs whose checkpoint is kept apart (``trial-L-genE.pt``) when the segment pauses."""
        return ()

    def weights_from(self, trial: Any) -> tuple[int, int] | None:
        """(lineage, epoch) of the snapshot a starting segment takes its weights from."""
        return None

    # ---- when a worker asks for work -----------------------------------------------------
    def decisions(self, view: View) -> Iterator[Decision]:
        """Candidate decisions, best first; the worker records the first one it wins."""
        return iter(())

    def retirements(self, view: View) -> list[Decision]:
        """Once nothing runs: decisions that retire what can never continue."""
        return []

    def pending(self, view: View) -> bool:
        """A decision is still to come though nothing runs or waits: the study is not over."""
        return False

    # ---- after the search --------------------------------------------------------------
    def describe(self, t: FrozenTrial) -> str:
        """What the schedule did at the start of this segment, in a few words."""
        return ""

    def columns(self, t: FrozenTrial) -> dict[str, Any]:
        """The schedule's own columns of ``tuner trials``."""
        return {}

    def segments(self, t: FrozenTrial) -> list[dict[str, Any]] | None:
        """The hyperparameter schedule of ``t``'s weights that ``tuner retrain`` replays:
        ``[{"from_epoch": 1, "params": ..., "lineage": L}, ...]``; None: its own params
        throughout."""
        return None


def is_paused(t: Any) -> bool:
    """A segment that paused (PRUNED with ``paused_at``): a decision may continue it."""
    return t.state.name == "PRUNED" and PAUSED_ATTR in t.user_attrs


def is_promotion(t: Any) -> bool:
    return PROMOTION_OF_ATTR in t.user_attrs


def latest(trials: Iterable[FrozenTrial]) -> dict[int, FrozenTrial]:
    """The last trial of each lineage."""
    out: dict[int, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        out[lineage(t)] = t
    return out


def settled(trials: Iterable[FrozenTrial]) -> bool:
    """Nothing runs or waits."""
    return not any(t.state.name in ("RUNNING", "WAITING") for t in trials)


def continuation(t: FrozenTrial, params: Mapping[str, Any] | None = None,
                 distributions: Mapping[str, Any] | None = None,
                 record: Mapping[str, Any] | None = None) -> Continuation:
    """``t``'s lineage going on from ``t`` (its own params unless given)."""
    return Continuation(lineage(t), t.number, dict(t.params if params is None else params),
                        dict(t.distributions if distributions is None else distributions),
                        dict(t.intermediate_values), record)
