"""What a study holds, read from its storage: :class:`Result` (counts, the best trial, the
rows), and the read-only operations on a study by name (``load``, ``trials``,
``best_params``), and ``retrain``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack

from tuner.api._prepare import DEFAULT_STORAGE, Options, quiet, settings
from tuner.errors import NoDatabase, StudyNotFound, TunerError

if TYPE_CHECKING:
    import optuna

    from tuner.retrain import Retrained
    from tuner.spec import StudySpec
    from tuner.study import Handle


@dataclass(frozen=True)
class Result:
    """A study as it stands in its storage: read afresh on each access."""

    handle: Handle
    # why the run ended: "budget spent", "timeout", "stopped", "stopped early (REASON)",
    # "device-time budget spent (H h)" or "done" (several workers);
    # None for a study opened by :func:`load`
    stopped_because: str | None = None
    # trials this process ran (one worker in this process), else None
    trials_run: int | None = None

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def study(self) -> optuna.Study:
        """The Optuna study, for ``optuna.visualization`` and friends."""
        return self.handle.study

    @property
    def spec(self) -> StudySpec:
        return self.handle.spec

    @property
    def counts(self) -> dict[str, int]:
        """Trials by state: COMPLETE, PRUNED, FAIL, RUNNING, WAITING."""
        from tuner.status import snapshot

        return snapshot(self.handle, with_heartbeats=False).counts

    @property
    def best_trial(self) -> int | None:
        """Number of the best completed trial, None before the first."""
        from tuner.status import snapshot

        return snapshot(self.handle, with_heartbeats=False).best_trial

    @property
    def best_value(self) -> float | None:
        """The best trial's value (of the reported metric, in a multi-objective study)."""
        from tuner.status import snapshot

        return snapshot(self.handle, with_heartbeats=False).best_value

    @property
    def best_params(self) -> dict[str, Any]:
        """What the best trial's code received: its sampled params and the constants."""
        from tuner.retrain import trial_params

        n = self.best_trial
        if n is None:
            raise TunerError(f"study {self.name!r} has no completed trial yet; run it first")
        return trial_params(self.spec, self.handle.study.trials[n])

    def trials(self) -> list[dict[str, Any]]:
        """One row per trial, as ``tuner trials NAME --format json`` prints them."""
        from tuner.status import trial_rows

        return trial_rows(self.handle.study, self.handle.spec)

    def __repr__(self) -> str:
        c = self.counts
        return (f"Result({self.name!r}: {c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} "
                f"pruned, {c.get('FAIL', 0)} failed; best {self.spec.metric_name} "
                f"{self.best_value})")


def load(name: str, *, storage: str = DEFAULT_STORAGE) -> Result:
    """Study ``name`` as it stands in ``storage`` (opened read-only: nothing is created)."""
    from tuner import study as st
    from tuner.storage import connect

    try:
        opened = connect(storage, access="read")
    except NoDatabase as e:  # say which study was looked for, not only where
        raise StudyNotFound(f"no study named {name!r}: {e}") from e
    with quiet():
        return Result(st.load(opened, name))


def trials(name: str, *, storage: str = DEFAULT_STORAGE) -> list[dict[str, Any]]:
    """``tuner trials NAME --format json``: one row per trial (number, state, value,
    ``params_*``, epochs, duration_s, started, retry_of, fail_reason)."""
    return load(name, storage=storage).trials()


def best_params(name: str, *, storage: str = DEFAULT_STORAGE) -> dict[str, Any]:
    """The params the best trial's code received (sampled values and constants): pass them
    to your own ``build`` or ``fit`` to train that configuration again."""
    return load(name, storage=storage).best_params


def retrain(name: str, *, trial: int | None = None, out: str | os.PathLike[str] | None = None,
            **options: Unpack[Options]) -> Retrained:
    """``tuner retrain``: retrain ``trial`` (default: the best) on train+val, test it once
    on the held-out test split, and save its weights and model card in ``out`` (default
    ``runs/NAME/trial-N``). ``tuner.retrain.load_model(out)`` loads the model back."""
    from tuner import retrain as rt
    from tuner import study as st
    from tuner.storage import connect

    s = settings(**options)
    with quiet():  # retrain records its test score in the study: not read-only
        handle = st.load(connect(s.storage, access="existing"), name)
    with quiet():
        return rt.retrain(handle, s, trial=trial, folder=out)
