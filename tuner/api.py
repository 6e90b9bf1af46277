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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from tuner import gate, threads, usercode
from tuner.errors import NoDatabase, SpecError, StudyNotFound, TunerError, UserCodeError
from tuner.settings import DEFAULT_URL, Heartbeat, Settings

if TYPE_CHECKING:
    import optuna

    from tuner.assets import StudyAssets
    from tuner.retrain import Retrained
    from tuner.spec import StudySpec
    from tuner.study import Handle
    from tuner.worker import Event

DEFAULT_STORAGE = DEFAULT_URL
# warnings that say nothing a user can act on: tuner drives Optuna's heartbeats itself and
# knows which of its features are experimental
QUIET_WARNINGS = r".*(experimental|Heartbeat of storage).*"


class Options(TypedDict, total=False):
    """The settings every running operation takes as keyword arguments (see :class:`Settings`)."""

    storage: str
    device: str
    data_dir: str | os.PathLike[str]
    checkpoint_dir: str | os.PathLike[str] | None
    keep_checkpoints: bool
    download: bool
    heartbeat_s: int
    grace_period_s: int
    db_patience_s: int
    stall_timeout_s: int | None
    fuse: str | int | None
    threads: int | str | None


def settings(**options: Unpack[Options]) -> Settings:
    """Settings from keyword arguments: the device resolved (``auto`` -> cuda or cpu), the
    checkpoint folder chosen (:func:`tuner.storage.checkpoint_folder`)."""
    from tuner.device import resolve
    from tuner.storage import checkpoint_folder

    hb = Heartbeat(options.pop("heartbeat_s", Heartbeat.interval),
                   options.pop("grace_period_s", Heartbeat.grace_period))
    storage = options.pop("storage", DEFAULT_URL)
    patience = options.pop("db_patience_s", Settings.db_patience)
    stall = options.pop("stall_timeout_s", Settings.stall_timeout)
    fuse = options.pop("fuse", None)
    n_threads = options.pop("threads", None)
    ckpt = checkpoint_folder(storage, options.pop("checkpoint_dir", None))
    device = resolve(options.pop("device", "auto"))
    given = {k: str(v) if k == "data_dir" else v for k, v in options.items()}
    return Settings(storage=storage, device=device, checkpoint_dir=ckpt, heartbeat=hb,
                    db_patience=patience, stall_timeout=stall,
                    fuse=None if fuse is None else str(fuse),
                    threads=None if n_threads is None else threads.parse(n_threads), **given)


def quiet_logging() -> None:
    """Process set-up for an entry point (the CLI, a worker process): Optuna's info lines
    off, tuner's warnings on stderr."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def as_spec(spec: str | os.PathLike[str] | Mapping[str, Any] | StudySpec, *,
            study: str | None = None, seed: int | None = None) -> StudySpec:
    """A study file's path, a dict shaped like one, or a spec -> a validated spec, renamed to
    ``study`` and reseeded with ``seed`` when given. Relative code paths in a dict resolve
    against its ``base_dir``, else the current folder."""
    from tuner.spec import StudySpec, load_spec, parse_spec

    if isinstance(spec, StudySpec):
        out = spec
    elif isinstance(spec, Mapping):
        raw = dict(spec)
        for role in usercode.ROLES:
            if callable(raw.get(role)):
                raw[role] = usercode.import_path(raw[role], role)
        out = parse_spec(raw, source="spec", base_dir=str(Path.cwd()))
    elif isinstance(spec, str | os.PathLike):
        out = load_spec(spec)
    else:
        raise SpecError(f"expected a study file's path, a dict or a StudySpec, not a "
                        f"{type(spec).__name__}")
    out = out.with_name(study)
    return out if seed is None else out.model_copy(update={"seed": seed})


# ---- preparing and running ------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """An open study whose code and data were checked in this process, ready to run."""

    handle: Handle
    settings: Settings
    assets: StudyAssets | None  # None when the check ran elsewhere (on the CPU, for children)
    # the torch CPU threads of each of this machine's workers, and why (the first line says it)
    threads: threads.Threads


def _check(spec: StudySpec, settings: Settings, local_workers: int) -> tuple[StudySpec, StudyAssets | None]:
    """Import the study's own code, load its data and try its model on a sample batch; a
    problem raises one clear error here, before any storage write. A parent of several local
    workers checks on the CPU and keeps nothing: its children load their own data on their
    own devices."""
    from tuner.assets import StudyAssets

    try:  # --fuse K where the study's trials cannot share one stacked model
        spec.check_fuse(settings.fuse_mode(spec.fuse))
    except ValueError as e:
        raise SpecError(str(e)) from None
    if spec.checkpoint:  # a file in its place is found now, not after the study was created
        gate.writable_folder(settings.checkpoint_dir, "--checkpoint-dir")
    device = "cpu" if local_workers > 1 else settings.device
    assets = StudyAssets(spec, device=device, data_dir=settings.data_dir,
                         download=settings.download)
    assets.preflight()
    spec = assets.spec  # with the task its data showed
    if local_workers > 1:
        assets.release()
        return spec, None
    return spec, assets


def _check_budget(trials: int | None, timeout: float | None, hours: float | None,
                  local_workers: int) -> None:
    """The budget a command adds, and the workers it starts, through the gate: before the
    storage is opened."""
    gate.inside(trials, "--trials", 1, gate.MAX_COUNT)
    gate.finite(timeout, "--timeout", high=gate.MAX_SECONDS)
    gate.inside(local_workers, "--workers", 0, gate.max_local_workers())
    if hours is not None and not (isinstance(hours, int | float) and math.isfinite(hours)
                                  and hours > 0):
        raise SpecError(f"--budget-hours must be a positive number of device-hours (got "
                        f"{hours}); e.g. --budget-hours 2.5, or leave it out for no limit")


def prepare(spec: StudySpec, settings: Settings, *, force: bool = False,
            trials: int | None = None, timeout: float | None = None, worker_index: int = 0,
            local_workers: int = 1, budget_hours: float | None = None,
            warm_from: str | None = None, from_url: str | None = None,
            enqueue_top: int | None = None) -> Prepared:
    """Open the storage, check the study's code and data, then create the study or resume
    it, and add ``trials`` / ``timeout`` / ``budget_hours`` to its budget. ``warm_from``
    names an earlier study (in ``from_url``, default the same storage) that a new study
    starts from (:mod:`tuner.warmstart`; ``enqueue_top`` K: its K best configurations when
    its results cannot carry over). A failed check leaves every study in the storage as it
    was."""
    from tuner import study as st
    from tuner.storage import connect, display_url, normalize_url

    _check_budget(trials, timeout, budget_hours, local_workers)
    if warm_from is not None:
        gate.study_name(warm_from, "--from")
    if (from_url is not None or enqueue_top is not None) and warm_from is None:
        raise SpecError("--from-storage and --enqueue-top go with --from OLD_STUDY; add it")
    local_file = normalize_url(settings.storage).drivername.startswith("sqlite")
    old = None
    if warm_from is not None:
        from tuner import warmstart

        with _quiet():  # read-only, before the new study's storage is even opened
            old = warmstart.source(warm_from, from_url or settings.storage)
    # a malformed URL failed above; an unreachable server fails here, before the data is
    # loaded; a SQLite file is opened (created) only once the study's code and data passed
    opened = None if local_file else connect(settings.storage, settings.heartbeat)
    spec, assets = _check(spec, settings, local_workers)
    if opened is None:
        opened = connect(settings.storage, settings.heartbeat)
    if old is not None:
        warmstart.refuse_existing(opened, spec.name, old)
    plan = None
    if old is not None:
        with _quiet():
            plan = warmstart.plan(old, spec, storage=display_url(from_url or settings.storage),
                                  enqueue_top=enqueue_top)
    with _quiet():
        handle = st.create_or_resume(opened, spec, force=force, worker_index=worker_index)
        if plan is not None and handle.created:  # never into a study that existed
            warmstart.apply(handle, plan)
    if trials is not None or timeout is not None or budget_hours is not None:
        st.add_budget(handle, trials, timeout, budget_hours)
    return Prepared(handle, settings, assets, _threads(settings, local_workers))


def _threads(settings: Settings, local_workers: int) -> threads.Threads:
    return threads.detect(explicit=settings.threads, workers=max(1, local_workers))


def prepare_existing(name: str, settings: Settings, *, trials: int | None = None,
                     timeout: float | None = None, worker_index: int = 0,
                     local_workers: int = 1, budget_hours: float | None = None) -> Prepared:
    """Open study ``name`` from the storage alone (its spec is stored in it), check its code
    and data, and add ``trials`` / ``timeout`` to its budget."""
    from tuner import study as st
    from tuner.storage import connect

    _check_budget(trials, timeout, budget_hours, local_workers)
    gate.study_name(name, "study")
    with _quiet():
        handle = st.load(connect(settings.storage, settings.heartbeat), name,
                         worker_index=worker_index)
    _, assets = _check(handle.spec, settings, local_workers)  # before the budget grows
    if trials is not None or timeout is not None or budget_hours is not None:
        st.add_budget(handle, trials, timeout, budget_hours)
    return Prepared(handle, settings, assets, _threads(settings, local_workers))


def go(prepared: Prepared, *, workers: int = 1, workers_per_gpu: int | None = None,
       on_event: Callable[[Event], None] | None = None,
       on_poll: Callable[[], None] | None = None) -> Result:
    """Run the prepared study's remaining budget: in this process (``workers=1``; the first
    Ctrl-C or SIGTERM finishes the current epoch, keeps its checkpoint and returns, a second
    stops at once), in ``workers`` local processes (``on_poll`` is called every second), or
    not at all (``workers=0``: workers join with ``tuner worker NAME``)."""
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
    from tuner.trials import TrialRunner

    assets = prepared.assets
    if assets is None:
        _, assets = _check(handle.spec, settings, 1)
    assert assets is not None
    threads.apply(prepared.threads)
    adapt = threads.Adaptive.for_worker(prepared.threads) if settings.device == "cpu" else None
    stop = threading.Event()
    runner = TrialRunner(assets, checkpoint_dir=settings.checkpoint_dir, stop=stop,
                         keep_checkpoints=settings.keep_checkpoints,
                         fuse=settings.fuse_mode(handle.spec.fuse))
    wk = w.Worker(handle, runner, heartbeat=settings.heartbeat, on_event=on_event,
                  db_patience=settings.db_patience, stall_timeout=settings.stall_timeout,
                  between_epochs=None if adapt is None else adapt.between_epochs)
    with w.graceful_signals(stop), _quiet():
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
         on_event: Callable[[Event], None] | None = None, local_workers: int = 1) -> Result:
    """``tuner worker``: join study ``study`` (a name, or a study file to create it from if
    nobody has, with the file's budget) as one worker until its budget is spent. Never adds
    budget. ``local_workers``: how many workers of this machine share its CPUs."""
    return go(prepare_work(study, settings, worker_index=worker_index,
                           local_workers=local_workers), on_event=on_event)


def prepare_work(study: str, settings: Settings, *, worker_index: int = 0,
                 local_workers: int = 1) -> Prepared:
    """:func:`work`'s first step: the study opened (or created from a study file) and checked."""
    if study.endswith((".yaml", ".yml")):
        prepared = prepare(as_spec(study), settings, worker_index=worker_index)
    else:
        prepared = prepare_existing(study, settings, worker_index=worker_index)
    # the check ran as one worker; the threads are those of one of ``local_workers``
    return dataclasses.replace(prepared, threads=_threads(settings, local_workers))


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


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUIET_WARNINGS)
        yield


# ---- results -----------------------------------------------------------------------------
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



# ---- reading studies ---------------------------------------------------------------------
def load(name: str, *, storage: str = DEFAULT_STORAGE) -> Result:
    """Study ``name`` as it stands in ``storage`` (opened read-only: nothing is created)."""
    from tuner import study as st
    from tuner.storage import connect

    try:
        opened = connect(storage, access="read")
    except NoDatabase as e:  # say which study was looked for, not only where
        raise StudyNotFound(f"no study named {name!r}: {e}") from e
    with _quiet():
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
    with _quiet():  # retrain records its test score in the study: not read-only
        handle = st.load(connect(s.storage, access="existing"), name)
    with _quiet():
        return rt.retrain(handle, s, trial=trial, folder=out)
