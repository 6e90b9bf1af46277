"""The trial context: the small, stable object every training loop receives.

A training loop is a function ``fit(params, ctx) -> float``. tuner's own loop
(:func:`tuner.training.train.fit`) and a user's loop (``trainer: mypkg.train:fit`` in a study file)
get the same ``ctx``; it knows nothing of Optuna from the loop's side::

    def fit(params, ctx):
        model = MyNet(params["width"]).to(ctx.device)
        opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
        start = 1
        if (state := ctx.load_checkpoint()) is not None:     # a retried trial resumes here
            model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
            start = state["epoch"] + 1
        for epoch in range(start, ctx.max_epochs + 1):
            ...train one epoch...
            score = evaluate(model)
            ctx.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(),
                                 "epoch": epoch})                # save first,
            ctx.report(epoch, score, train_loss=loss)            # then report
        return score

``ctx.report`` records the learning curve and raises :class:`TrialPruned` when the pruner
stops the trial (or :class:`StopRequested` when the worker is asked to stop): let it
propagate. Checkpoints hold tensors, numbers, strings, lists and dicts (they are loaded
with ``weights_only=True``).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tuner.errors import CheckpointUnwritable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tuner.data import DataBundle


class TrialPruned(Exception):
    """Raised by :meth:`Context.report` when the trial should stop early. Let it propagate."""


class StopRequested(Exception):
    """Raised by :meth:`Context.report` when the worker was asked to stop (SIGTERM, Ctrl-C).
    The last checkpoint is kept and the trial is retried later from it."""


class Reporter(Protocol):
    """Where reports go. ``report`` returns True when the trial should be pruned."""

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool: ...

    def stop_requested(self) -> bool: ...


class GroupReporter(Protocol):
    """Where several trials' reports go at once (a fused group's members after an epoch):
    one verdict per report, in order, each True (prune), False (go on) or the exception
    that member's own ``report`` would have raised."""

    def report_many(self, reports: Sequence[tuple[Reporter, int, float, Mapping[str, float]]]
                    ) -> list[bool | Exception]: ...


class NullReporter:
    """Records nothing and never prunes (retraining, tests, plain calls of ``fit``)."""

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        return False

    def stop_requested(self) -> bool:
        return False


class CheckpointStore:
    """One trial's checkpoint file, shared by its retries. Writes are atomic."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def save(self, state: Mapping[str, Any], *, packed: bool = False) -> None:
        """Write ``state``; raises :class:`CheckpointUnwritable` when the disk refuses (full,
        read-only, a file where the folder should be), leaving the last checkpoint whole.
        ``packed``: its float32 tensors go in one flat tensor (:func:`_pack`), which
        :meth:`load` unpacks, so readers see the same state."""
        import torch

        if packed:
            state = _pack(state)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".pt")
        except OSError as e:
            raise self._unwritable(e) from e
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(dict(state), f)
            os.replace(tmp, self.path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            # torch's zip writer reports a refused write (ENOSPC) as a RuntimeError
            if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "write" in str(e)):
                raise self._unwritable(e) from e
            raise

    def _unwritable(self, e: BaseException) -> CheckpointUnwritable:
        why = getattr(e, "strerror", None) or next(iter(str(e).splitlines()), type(e).__name__)
        return CheckpointUnwritable(
            f"cannot write the checkpoint {self.path}: {why}; free space there, or give "
            "--checkpoint-dir a writable folder (shared by every worker of the study)")

    def load(self) -> dict[str, Any] | None:
        import torch

        if not self.path.exists():
            return None
        return _unpack(torch.load(self.path, map_location="cpu", weights_only=True))

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


# a packed checkpoint (CheckpointStore.save(packed=True)): its float32 tensors, flattened
# and concatenated under _FLAT, each replaced by {_SLOT: shape} in the order they were met
_FLAT, _SLOT = "_tuner_packed_flat", "_tuner_packed_slot"


def _map_leaves(o: Any, leaf: Callable[[Any], Any],
                is_leaf: Callable[[Any], bool] = lambda o: False) -> Any:
    """``o`` with ``leaf`` applied to everything that is not a dict, list or tuple, or that
    ``is_leaf`` says is one (a module's state_dict keeps its ``_metadata``, the versions
    its loader reads)."""
    if is_leaf(o):
        return leaf(o)
    if isinstance(o, dict):
        out = type(o)((k, _map_leaves(v, leaf, is_leaf)) for k, v in o.items())
        if hasattr(o, "_metadata"):
            out._metadata = o._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(o, list | tuple):
        return type(o)(_map_leaves(v, leaf, is_leaf) for v in o)
    return leaf(o)


def _pack(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every float32 tensor (weights, optimizer moments, steps) moved into one
    flat tensor. torch.save pays per tensor: a small MLP's checkpoint holds about thirty, and
    packed it saves in half the time, which a fused group pays K times an epoch."""
    import torch

    flat: list[torch.Tensor] = []

    def slot(o: Any) -> Any:
        if isinstance(o, torch.Tensor) and o.dtype == torch.float32 and not o.requires_grad:
            flat.append(o.detach().reshape(-1).cpu())
            return {_SLOT: list(o.shape)}
        return o

    packed = _map_leaves(dict(state), slot)
    packed[_FLAT] = torch.cat(flat) if flat else torch.zeros(0)
    return packed


def _unpack(state: dict[str, Any]) -> dict[str, Any]:
    """A packed checkpoint back as it was saved; any other state as it is. Each tensor gets
    its own storage again, as torch.load gives them (a view would drag the whole flat
    tensor into every later save of it)."""
    if not isinstance(state, dict) or _FLAT not in state:
        return state
    flat = state.pop(_FLAT)
    offset = 0

    def is_slot(o: Any) -> bool:
        return isinstance(o, dict) and set(o) == {_SLOT}

    def unslot(o: Any) -> Any:
        nonlocal offset
        if not is_slot(o):
            return o
        n = math.prod(o[_SLOT])
        offset += n
        return flat[offset - n:offset].view(o[_SLOT]).clone()

    return _map_leaves(state, unslot, is_slot)


@dataclass
class Context:
    """What a training loop gets besides its params. See the module docstring."""

    device: torch.device
    seed: int
    max_epochs: int
    task: str = "classification"
    metric: str = "accuracy"
    # the built-in data (or the study's own ``data:`` loader), kept on ``device``; None when
    # the study names no data and the trainer brings its own
    data: DataBundle | None = None
    # params -> nn.Module for this data (the study's ``model:``), moved to nothing yet
    build_model: Callable[[Mapping[str, Any]], nn.Module] | None = None
    trial_number: int | None = None
    amp: bool = False
    compile: bool = False
    reporter: Reporter = field(default_factory=NullReporter)
    checkpoints: CheckpointStore | None = None
    # what was reported, epoch by epoch: [{"epoch": 1, "value": 0.93, "train_loss": 0.2}, ...]
    history: list[dict[str, float]] = field(default_factory=list)
    # free-form facts a loop wants kept on the trial (shown in the dashboard and reports)
    info: dict[str, Any] = field(default_factory=dict)

    def silent_copy(self, *, seed: int, data: DataBundle | None) -> Context:
        """This context for a stand-in run (timing ``fuse: auto``'s candidates): the same
        device, epochs, task, metric, builder, amp and compile, another seed and data, and
        nothing reported, checkpointed or kept."""
        return Context(device=self.device, seed=seed, max_epochs=self.max_epochs,
                       task=self.task, metric=self.metric, data=data,
                       build_model=self.build_model, amp=self.amp, compile=self.compile)

    def report(self, epoch: int, value: float, **extras: float) -> None:
        """Record the validation metric after ``epoch`` (1-based). Raises :class:`TrialPruned`
        when the pruner stops the trial, :class:`StopRequested` when the worker must stop."""
        value, extras = self._record(epoch, value, extras)
        self._obey(self.reporter.report(epoch, value, extras), epoch)

    def _record(self, epoch: int, value: float, extras: Mapping[str, float]
                ) -> tuple[float, dict[str, float]]:
        """Keep the report in the history; a non-finite metric ends the trial here."""
        value = float(value)
        extras = {k: float(v) for k, v in extras.items()}
        self.history.append({"epoch": epoch, "value": value, **extras})
        if not math.isfinite(value):
            raise TrialPruned(f"the metric is {value} at epoch {epoch}")
        return value, extras

    def _obey(self, prune: bool, epoch: int) -> None:
        """After a report reached the reporter: raise if the trial is pruned or must stop."""
        if prune:
            raise TrialPruned(f"pruned at epoch {epoch}")
        if self.reporter.stop_requested():
            raise StopRequested(f"stopped after epoch {epoch}")

    def save_checkpoint(self, state: Mapping[str, Any], *, packed: bool = False) -> None:
        """Keep ``state`` so a retry of this trial can continue from it (no-op when the study
        keeps no checkpoints). Save before you report. ``packed``: stored with its float32
        tensors in one (:meth:`CheckpointStore.save`); loaded the same."""
        if self.checkpoints is not None:
            self.checkpoints.save({**state, "_history": list(self.history)}, packed=packed)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state last saved by this trial or the trial it retries, else None."""
        if self.checkpoints is None:
            return None
        state = self.checkpoints.load()
        if state is not None:
            self.history = list(state.pop("_history", []))
        return state


def report_together(ctxs: Sequence[Context], epoch: int,
                    reports: Sequence[tuple[float, Mapping[str, float]]]) -> list[Exception | None]:
    """``ctx.report(epoch, value, **extras)`` for several contexts at once (the members of a
    fused group after one epoch). Each keeps its own curve and gets its own verdict: None to
    go on, or the exception its ``ctx.report`` would have raised (:class:`TrialPruned`,
    :class:`StopRequested`, the reporter's error). Reporters that share a ``together``
    (:class:`GroupReporter`: the worker's fused group) get their reports in one call, so the
    database sees one write per epoch instead of one per member; the others, one by one."""
    out: list[Exception | None] = [None] * len(ctxs)
    groups: dict[int, tuple[GroupReporter, list[tuple[int, float, dict[str, float]]]]] = {}
    for i, (ctx, (value, extras)) in enumerate(zip(ctxs, reports, strict=True)):
        try:
            value, extras = ctx._record(epoch, value, extras)
            group = getattr(ctx.reporter, "together", None)
            if group is None:
                ctx._obey(ctx.reporter.report(epoch, value, extras), epoch)
            else:
                groups.setdefault(id(group), (group, []))[1].append((i, value, extras))
        except Exception as e:  # noqa: BLE001 - this member's verdict, as its report raises it
            out[i] = e
    for group, members in groups.values():
        try:
            verdicts: list[bool | Exception] = group.report_many(
                [(ctxs[i].reporter, epoch, value, extras) for i, value, extras in members])
        except Exception as e:  # noqa: BLE001 - the shared write failed: every member says why
            verdicts = [e] * len(members)
        for (i, _, _), verdict in zip(members, verdicts, strict=True):
            if isinstance(verdict, Exception):
                out[i] = verdict
                continue
            try:
                ctxs[i]._obey(verdict, epoch)
            except Exception as e:  # noqa: BLE001 - as above
                out[i] = e
    return out
