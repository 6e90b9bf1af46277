"""Preparing a study to run: settings from keyword arguments, a study file or dict -> a spec,
and the checks (the budget a command adds, the study's own code and data) that run before
anything is written to the storage; then the study created or resumed, with its budget."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from tuner import gate, threads, usercode
from tuner.errors import SpecError
from tuner.settings import DEFAULT_URL, Heartbeat, Settings

if TYPE_CHECKING:
    from tuner.assets import StudyAssets
    from tuner.spec import StudySpec
    from tuner.study import Handle

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


@dataclass(frozen=True)
class Prepared:
    """An open study whose code and data were checked in this process, ready to run."""

    handle: Handle
    settings: Settings
    assets: StudyAssets | None  # None when the check ran elsewhere (on the CPU, for children)
    # the torch CPU threads of each of this machine's workers, and why (the first line says it)
    threads: threads.Threads


def check(spec: StudySpec, settings: Settings, local_workers: int) -> tuple[StudySpec, StudyAssets | None]:
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

        with quiet():  # read-only, before the new study's storage is even opened
            old = warmstart.source(warm_from, from_url or settings.storage)
    # a malformed URL failed above; an unreachable server fails here, before the data is
    # loaded; a SQLite file is opened (created) only once the study's code and data passed
    opened = None if local_file else connect(settings.storage, settings.heartbeat)
    spec, assets = check(spec, settings, local_workers)
    if opened is None:
        opened = connect(settings.storage, settings.heartbeat)
    if old is not None:
        warmstart.refuse_existing(opened, spec.name, old)
    plan = None
    if old is not None:
        with quiet():
            plan = warmstart.plan(old, spec, storage=display_url(from_url or settings.storage),
                                  enqueue_top=enqueue_top)
    with quiet():
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
    with quiet():
        handle = st.load(connect(settings.storage, settings.heartbeat), name,
                         worker_index=worker_index)
    _, assets = check(handle.spec, settings, local_workers)  # before the budget grows
    if trials is not None or timeout is not None or budget_hours is not None:
        st.add_budget(handle, trials, timeout, budget_hours)
    return Prepared(handle, settings, assets, _threads(settings, local_workers))


def prepare_work(study: str, settings: Settings, *, worker_index: int = 0,
                 local_workers: int = 1) -> Prepared:
    """:func:`tuner.api.work`'s first step: the study opened (or created from a study file) and checked."""
    if study.endswith((".yaml", ".yml")):
        prepared = prepare(as_spec(study), settings, worker_index=worker_index)
    else:
        prepared = prepare_existing(study, settings, worker_index=worker_index)
    # the check ran as one worker; the threads are those of one of ``local_workers``
    return dataclasses.replace(prepared, threads=_threads(settings, local_workers))


@contextmanager
def quiet() -> Iterator[None]:
    """Optuna's warnings that say nothing a user can act on (:data:`QUIET_WARNINGS`), off."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUIET_WARNINGS)
        yield
