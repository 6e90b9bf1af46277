"""Why a trial failed, in one line, and what kind of failure it was: out of GPU memory
(infeasible: PRUNED, with a violated constraint for the sampler), a CUDA device-side assert
(the process's GPU is broken), finished from outside while it ran (:class:`FinishedElsewhere`),
or the user's code failing (FAIL)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tuner import storage
from tuner.training.context import Context
from tuner.trial_schema import INFEASIBLE_ATTR, PEAK_MEMORY_ATTR
from tuner.trials.outcome import Outcome

# a trial that could not run where it ran (out of GPU memory) is PRUNED with INFEASIBLE_ATTR,
# not FAIL, and violates constraint MEMORY_CONSTRAINT (Trial.set_constraint)
MEMORY_CONSTRAINT = "gpu_memory"
FAIL_REASON_CHARS = 1000


class FinishedElsewhere(Exception):  # noqa: N818 - a control-flow signal, like TrialPruned
    """The running trial was finished from outside (optuna-dashboard's "Fail trial" or
    another process's tell): stop training it, it has nothing more to record."""


def finished_elsewhere(trial: optuna.Trial, e: BaseException) -> FinishedElsewhere:
    return FinishedElsewhere(f"trial {trial.number} was finished from outside while it ran "
                             f"(optuna-dashboard, or another process's tell): {e}")


def is_finished_elsewhere(e: BaseException) -> bool:
    """Raised because the trial was finished from outside, even if the user's loop wrapped
    it."""
    return any(isinstance(c, FinishedElsewhere | UpdateFinishedTrialError) for c in _chain(e))


def fail_reason(e: BaseException) -> str:
    """``Type: message`` with every line of the message and of its causes, on one line: CUDA
    errors name their cause on the first line and advice on the last."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        lines = [line.strip() for line in str(cur).splitlines() if line.strip()]
        parts.append(f"{type(cur).__name__}: {' | '.join(lines)}" if lines
                     else type(cur).__name__)
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return " <- ".join(parts)[:FAIL_REASON_CHARS]


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA out-of-memory error, even wrapped by a user's trainer."""
    import torch

    return any(isinstance(c, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(c)
               for c in _chain(e))


def is_device_assert(e: BaseException) -> bool:
    """A CUDA device-side assert (an index out of range in a kernel, say): after one, every
    CUDA call of this process fails."""
    return any("device-side assert" in str(c) for c in _chain(e))


def failed(trial: optuna.Trial, e: Exception, device: str) -> Outcome:
    """The outcome of a trial that raised: out of GPU memory is infeasible (PRUNED, with
    its peak memory, and a violated constraint for the sampler), not a failure; a
    device-side assert fails the trial and marks the process as broken."""
    reason = fail_reason(e)
    if is_out_of_memory(e):
        from tuner.device import peak_memory

        peak = peak_memory(device)
        attrs: dict[str, Any] = {INFEASIBLE_ATTR: "out of GPU memory"}
        if peak is not None:
            attrs[PEAK_MEMORY_ATTR] = round(peak / 2**20, 1)
            reason = f"out of GPU memory (peak {peak / 2**30:.2f} GiB): {reason}"
        storage.set_user_attrs(trial, attrs)
        # a violated constraint: TPE (and the other constrained samplers) rank it below
        # every feasible trial and steer away from its region
        trial.set_constraint(MEMORY_CONSTRAINT, 1.0)
        return Outcome(TrialState.PRUNED, fail_reason=reason[:FAIL_REASON_CHARS])
    if is_device_assert(e):
        return Outcome(TrialState.FAIL, fail_reason=reason, broken_device=True)
    return Outcome(TrialState.FAIL, fail_reason=reason)


def elsewhere(trial: optuna.Trial, ctxs: list[Context], patience: storage.Patience) -> Outcome:
    """The outcome of a trial finished from outside while it ran: the state it was given
    there, and why its worker stopped it."""
    state = patience.call(lambda: storage.state(trial.study, trial))
    epochs = max((int(h["epoch"]) for c in ctxs for h in c.history), default=0)
    return Outcome(state, fail_reason=(
        f"finished from outside as {state.name} while it ran (optuna-dashboard's buttons "
        f"or another process's tell); its worker stopped it after epoch {epochs}"),
        elsewhere=True)
