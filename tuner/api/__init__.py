"""The Python API: what the ``tuner`` command does, for notebooks and scripts.

    from tuner import api

    result = api.run("study.yaml", trials=20)          # or a dict shaped like a study file
    result.best_value, result.best_params
    api.trials("my_study")                             # rows as `tuner trials --format json`
    api.best_params("my_study")                        # what the best trial's code received
    api.retrain("my_study")                            # best trial on train+val, tested once

(``tuner.run``, ``tuner.trials``... are the same functions.)

In a dict, ``model`` / ``data`` / ``trainer`` may be functions as well as import paths: a
function defined in the notebook itself works with ``workers=1``.

Nothing here prints. Problems raise :class:`tuner.errors.TunerError` subclasses whose message
is one line that names the fix; :func:`prepare` checks the study's own code and data before
it writes anything to the storage. ``tuner.cli`` is a thin layer over these functions: it
calls :func:`prepare` (or :func:`prepare_existing`), prints, then :func:`go`; :func:`run`
and :func:`resume` are the same two steps in one call.

Preparing (settings, specs, the checks, :func:`prepare`) is in :mod:`tuner.api._prepare`;
reading what a study holds (:class:`Result`, :func:`load`, :func:`retrain`) in
:mod:`tuner.api._results`; running (:func:`go` and the operations built on it) here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Unpack

from tuner import threads, usercode
from tuner.api._prepare import (
    DEFAULT_STORAGE,
    QUIET_WARNINGS,
    Options,
    Prepared,
    as_spec,
    check,
    prepare,
    prepare_existing,
    prepare_work,
    quiet,
    quiet_logging,
    settings,
)
from tuner.api._results import Result, best_params, load, retrain, trials
from tuner.errors import TunerError, UserCodeError

if TYPE_CHECKING:
    from tuner.settings import Settings
    from tuner.spec import StudySpec
    from tuner.worker import Event

__all__ = ["DEFAULT_STORAGE", "QUIET_WARNINGS", "Options", "Prepared", "Result", "as_spec",
           "best_params", "go", "load", "prepare", "prepare_existing", "prepare_work",
           "quiet_logging", "resume", "retrain", "run", "settings", "trials", "work"]


def go(prepared: Prepared, *, workers: int = 1, workers_per_gpu: int | None = None,
       on_event: Callable[[Event], None] | None = None,
       on_poll: Callable[[], None] | None = None,
       on_stall: Callable[[TunerError], None] | None = None) -> Result:
    """Run the prepared study's remaining budget: in this process (``workers=1``; the first
    Ctrl-C or SIGTERM finishes the current epoch, keeps its checkpoint and returns, a second
    stops at once), in ``workers`` local processes (``on_poll`` is called every second), or
    not at all (``workers=0``: workers join with ``tuner worker NAME``). A trial of this
    process that finishes no epoch for ``--stall-timeout`` is failed, queued again and handed
    to ``on_stall`` (from the heartbeat thread, while the training loop hangs): the CLI's
    exits the process."""
    handle, settings = prepared.handle, prepared.settings
    if workers == 0:
        return Result(handle)
    if workers > 1:
        from tuner.local import run_local

        for role in usercode.ROLES:
            if usercode.in_main(getattr(handle.spec, role)):
                raise UserCodeError(
                    f"{role}: {getattr(handle.spec, role)} is defined in this notebook or "
                    "script, which worker processes cannot import; use workers=1, or move it "
                    "into a .py file and name it as file.py:name")
        from tuner.errors import SpawnFailed

        try:
            run_local(handle.name, settings, workers, workers_per_gpu,
                      poll=None if on_poll is None else _patient_poll(on_poll))
        except SpawnFailed:
            if handle.created:  # no worker of this command is left: take the study back
                from tuner import study as st
                from tuner.storage import connect

                st.delete(connect(settings.storage), handle.name)
            raise
        return Result(handle, "done")
    from tuner import worker as w
    from tuner.objective import TrialRunner

    assets = prepared.assets
    if assets is None:
        _, assets = check(handle.spec, settings, 1)
    assert assets is not None
    threads.apply(prepared.threads)
    adapt = threads.Adaptive.for_worker(prepared.threads) if settings.device == "cpu" else None
    stop = threading.Event()
    runner = TrialRunner(assets, checkpoint_dir=settings.checkpoint_dir, stop=stop,
                         keep_checkpoints=settings.keep_checkpoints,
                         fuse=settings.fuse_mode(handle.spec.fuse))
    wk = w.Worker(handle, runner, heartbeat=settings.heartbeat, on_event=on_event,
                  db_patience=settings.db_patience, stall_timeout=settings.stall_timeout,
                  between_epochs=None if adapt is None else adapt.between_epochs,
                  on_stall=on_stall)
    with w.graceful_signals(stop), quiet():
        summary = wk.run()
    return Result(handle, summary.stopped_because, summary.trials)


def run(spec: str | os.PathLike[str] | Mapping[str, Any] | StudySpec, *,
        trials: int | None = None, timeout: float | None = None, study: str | None = None,
        seed: int | None = None, workers: int = 1, workers_per_gpu: int | None = None,
        force: bool = False, on_event: Callable[[Event], None] | None = None,
        budget_hours: float | None = None, **options: Unpack[Options]) -> Result:
    """``tuner run``: create the study from ``spec`` (a study file, a dict shaped like one,
    or a StudySpec), or resume it if it exists, and run ``trials`` more trials (default: the
    study's own budget) for at most ``timeout`` seconds. ``on_event`` gets the progress of
    a single worker (trial started, epoch, finished). ``options``: storage, device,
    data_dir, checkpoint_dir, keep_checkpoints, download, heartbeat_s, grace_period_s, db_patience_s."""
    s = as_spec(spec, study=study, seed=seed)
    if workers > 1:
        for role in usercode.ROLES:
            if usercode.in_main(getattr(s, role)):
                raise UserCodeError(
                    f"{role}: {getattr(s, role)} is defined in this notebook or script, which "
                    "worker processes cannot import; use workers=1, or move it into a .py file "
                    "and name it as file.py:name")
    prepared = prepare(s, settings(**options), force=force, trials=trials, timeout=timeout,
                       local_workers=workers, budget_hours=budget_hours)
    return go(prepared, workers=workers, workers_per_gpu=workers_per_gpu, on_event=on_event)


def resume(name: str, *, trials: int | None = None, timeout: float | None = None,
           workers: int = 1, workers_per_gpu: int | None = None,
           on_event: Callable[[Event], None] | None = None,
           budget_hours: float | None = None, **options: Unpack[Options]) -> Result:
    """``tuner resume``: continue study ``name`` from the storage alone (no study file)."""
    prepared = prepare_existing(name, settings(**options), trials=trials, timeout=timeout,
                                local_workers=workers, budget_hours=budget_hours)
    return go(prepared, workers=workers, workers_per_gpu=workers_per_gpu, on_event=on_event)


def work(study: str, settings: Settings, *, worker_index: int = 0,
         on_event: Callable[[Event], None] | None = None, local_workers: int = 1,
         on_stall: Callable[[TunerError], None] | None = None) -> Result:
    """``tuner worker``: join study ``study`` (a name, or a study file to create it from if
    nobody has, with the file's budget) as one worker until its budget is spent. Never adds
    budget. ``local_workers``: how many workers of this machine share its CPUs; ``on_stall``
    as :func:`go`'s."""
    return go(prepare_work(study, settings, worker_index=worker_index,
                           local_workers=local_workers), on_event=on_event, on_stall=on_stall)


def _patient_poll(poll: Callable[[], None]) -> Callable[[], None]:
    """``poll``, skipped while the database is unreachable: the workers ride it out, and the
    progress display waits for them."""
    from tuner.storage import is_outage

    def patient() -> None:
        try:
            poll()
        except Exception as e:
            if not is_outage(e):
                raise

    return patient
