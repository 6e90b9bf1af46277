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
is one line that names the fix; :func:`run` checks the study's own code and data before it
writes anything to the storage. ``tuner.cli`` is a thin layer over these functions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import usercode
from tuner.errors import SpecError, TunerError, UserCodeError

if TYPE_CHECKING:
    import optuna

    from tuner.objective import Runtime
    from tuner.retrain import Retrained
    from tuner.spec import StudySpec
    from tuner.storage import Heartbeat
    from tuner.study import Handle
    from tuner.worker import Event, Summary

DEFAULT_STORAGE = "sqlite:///tuner.db"
# warnings that say nothing a user can act on: tuner drives Optuna's heartbeats itself and
# knows which of its features are experimental
QUIET_WARNINGS = r".*(experimental|Heartbeat of storage).*"


# ---- the pieces the CLI shares -----------------------------------------------------------
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


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; checks the others."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TunerError(f"--device {device}: no CUDA GPU is visible here; use --device cpu "
                         "or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TunerError(f"--device {device}: unknown device; use auto, cpu, cuda or cuda:N")
    return device


def checkpoint_folder(storage: str, given: str | os.PathLike[str] | None = None) -> str:
    """``given``, else ``tuner_checkpoints`` beside a SQLite file (so workers sharing the
    file share the checkpoints), else ``./tuner_checkpoints``."""
    if given is not None:
        return str(given)
    from tuner.storage import normalize_url

    url = normalize_url(storage)
    if url.get_backend_name() == "sqlite" and url.database:
        return str(Path(url.database).expanduser().resolve().parent / "tuner_checkpoints")
    return "tuner_checkpoints"


def make_runtime(storage: str = DEFAULT_STORAGE, device: str = "auto",
                 data_dir: str | os.PathLike[str] = "data",
                 checkpoint_dir: str | os.PathLike[str] | None = None,
                 keep_checkpoints: bool = False, download: bool = True) -> Runtime:
    """This process's facts for running trials: device, folders, a stop flag."""
    from tuner.objective import Runtime

    return Runtime(device=resolve_device(device), data_dir=str(data_dir), download=download,
                   checkpoint_dir=checkpoint_folder(storage, checkpoint_dir),
                   keep_checkpoints=keep_checkpoints)


def heartbeat(interval: int = 5, grace_period: int = 20) -> Heartbeat:
    from tuner.storage import Heartbeat

    return Heartbeat(interval=interval, grace_period=max(grace_period, interval + 1))


def check(spec: StudySpec, runtime: Runtime) -> None:
    """Import the study's own model, data and trainer, load its data and try its model on a
    sample batch: a problem raises one clear error here, before any trial or storage write."""
    from tuner.objective import Objective

    Objective(spec, runtime).preflight()


def open_study(spec: StudySpec, storage: str, runtime: Runtime, *,
               hb: Heartbeat | None = None, force: bool = False, trials: int | None = None,
               timeout: float | None = None, worker_index: int = 0) -> Handle:
    """Open the storage, check the study's code and data (:func:`check`), then create the
    study or resume it, and add ``trials`` / ``timeout`` to its budget. A failed check leaves
    every study in the storage as it was."""
    from tuner import study as st
    from tuner.storage import open_storage

    opened = open_storage(storage, hb)  # first: a wrong URL is reported before a long load
    check(spec, runtime)
    with _quiet():
        handle = st.create_or_resume(opened, spec, force=force, worker_index=worker_index)
    if trials is not None or timeout is not None:
        st.add_budget(handle, trials, timeout)
    return handle


def work(handle: Handle, runtime: Runtime, hb: Heartbeat,
         on_event: Callable[[Event], None] | None = None) -> Summary:
    """Run trials in this process until the study's budget is spent. The first Ctrl-C (or
    SIGTERM) finishes the current epoch, keeps its checkpoint and returns; a second stops
    at once."""
    from tuner import worker as w

    wk = w.Worker(handle, runtime, heartbeat=hb, on_event=on_event)
    with _signals(runtime), _quiet():
        return wk.run()


def run_workers(handle: Handle, storage: str, runtime: Runtime, hb: Heartbeat, workers: int,
                per_gpu: int | None = None, poll: Callable[[], None] | None = None) -> None:
    """Run the study with ``workers`` worker processes on this machine (``tuner worker``),
    one device each, calling ``poll`` every second until they end."""
    from tuner import worker as w

    gpus = 0
    if runtime.device != "cpu":
        import torch

        gpus = torch.cuda.device_count()
    envs = w.assign_devices(workers, runtime.device, gpus, per_gpu)
    if not gpus and "OMP_NUM_THREADS" not in os.environ:
        # CPU workers share the cores: more torch threads than cores stalls them all
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        envs = [{**env, "OMP_NUM_THREADS": threads} for env in envs]
    device = "cuda" if gpus and runtime.device == "cuda" else runtime.device
    args = ["--storage", storage, "--device", device, "--data-dir", runtime.data_dir,
            "--checkpoint-dir", runtime.checkpoint_dir, "--heartbeat", str(hb.interval),
            "--grace-period", str(hb.grace_period), "--quiet",
            "--download" if runtime.download else "--no-download",
            *(["--keep-checkpoints"] if runtime.keep_checkpoints else [])]
    procs = w.spawn(handle.name, args, envs)
    with _forward_sigterm(procs):
        try:
            while any(p.poll() is None for p in procs):
                if poll is not None:
                    poll()
                time.sleep(1.0)
            if poll is not None:
                poll()
        except KeyboardInterrupt:
            for p in procs:  # the workers got the same Ctrl-C; give them time to checkpoint
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            raise
    codes = [p.returncode for p in procs]
    if any(codes):
        raise TunerError(f"{sum(1 for c in codes if c)} of {workers} workers failed (exit codes "
                         f"{codes}); see their messages above")


@contextmanager
def _forward_sigterm(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """SIGTERM to the parent (``docker stop``, a scheduler) reaches its workers too: each
    finishes its epoch and leaves its trial resumable; the parent waits for them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def _signals(runtime: Runtime) -> Iterator[None]:
    from tuner import worker as w

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    with w.graceful_signals(runtime.stop):
        yield


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
    # why the run ended: "budget spent", "timeout", "stopped" or "done" (several workers);
    # None for a study opened by :func:`load`
    stopped_because: str | None = None

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
        n = self.best_trial
        return None if n is None else self.handle.study.trials[n].value

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

        return trial_rows(self.handle.study)

    def __repr__(self) -> str:
        c = self.counts
        return (f"Result({self.name!r}: {c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} "
                f"pruned, {c.get('FAIL', 0)} failed; best {self.spec.metric_name} "
                f"{self.best_value})")


# ---- the operations ------------------------------------------------------------------------
def run(spec: str | os.PathLike[str] | Mapping[str, Any] | StudySpec, *,
        trials: int | None = None, timeout: float | None = None,
        storage: str = DEFAULT_STORAGE, device: str = "auto", study: str | None = None,
        seed: int | None = None, workers: int = 1, workers_per_gpu: int | None = None,
        force: bool = False, data_dir: str | os.PathLike[str] = "data",
        checkpoint_dir: str | os.PathLike[str] | None = None, keep_checkpoints: bool = False,
        download: bool = True, heartbeat_s: int = 5, grace_period_s: int = 20,
        on_event: Callable[[Event], None] | None = None) -> Result:
    """``tuner run``: create the study from ``spec`` (a study file, a dict shaped like one,
    or a StudySpec), or resume it if it exists, and run ``trials`` more trials (default: the
    study's own budget) for at most ``timeout`` seconds. ``on_event`` gets the progress of
    a single worker (trial started, epoch, finished)."""
    s = as_spec(spec, study=study, seed=seed)
    if workers > 1:
        for role in usercode.ROLES:
            if usercode.in_main(getattr(s, role)):
                raise UserCodeError(
                    f"{role}: {getattr(s, role)} is defined in this notebook or script, which "
                    "worker processes cannot import; use workers=1, or move it into a .py file "
                    "and name it as file.py:name")
    hb = heartbeat(heartbeat_s, grace_period_s)
    runtime = make_runtime(storage, device, data_dir, checkpoint_dir, keep_checkpoints, download)
    handle = open_study(s, storage, runtime, hb=hb, force=force, trials=trials, timeout=timeout)
    return _go(handle, storage, runtime, hb, workers, workers_per_gpu, on_event)


def resume(name: str, *, trials: int | None = None, timeout: float | None = None,
           storage: str = DEFAULT_STORAGE, device: str = "auto", workers: int = 1,
           workers_per_gpu: int | None = None, data_dir: str | os.PathLike[str] = "data",
           checkpoint_dir: str | os.PathLike[str] | None = None,
           keep_checkpoints: bool = False, download: bool = True, heartbeat_s: int = 5,
           grace_period_s: int = 20, on_event: Callable[[Event], None] | None = None) -> Result:
    """``tuner resume``: continue study ``name`` from the storage alone (no study file)."""
    from tuner import study as st
    from tuner.storage import open_storage

    hb = heartbeat(heartbeat_s, grace_period_s)
    runtime = make_runtime(storage, device, data_dir, checkpoint_dir, keep_checkpoints, download)
    with _quiet():
        handle = st.load(open_storage(storage, hb), name)
    check(handle.spec, runtime)
    if trials is not None or timeout is not None:
        st.add_budget(handle, trials, timeout)
    return _go(handle, storage, runtime, hb, workers, workers_per_gpu, on_event)


def _go(handle: Handle, storage: str, runtime: Runtime, hb: Heartbeat, workers: int,
        per_gpu: int | None, on_event: Callable[[Event], None] | None) -> Result:
    if workers == 0:  # only create the study: workers join it with `tuner worker NAME`
        return Result(handle)
    if workers == 1:
        return Result(handle, work(handle, runtime, hb, on_event).stopped_because)
    run_workers(handle, storage, runtime, hb, workers, per_gpu)
    return Result(handle, "done")


def load(name: str, *, storage: str = DEFAULT_STORAGE) -> Result:
    """Study ``name`` as it stands in ``storage``."""
    from tuner import study as st
    from tuner.storage import open_storage

    with _quiet():
        return Result(st.load(open_storage(storage), name))


def trials(name: str, *, storage: str = DEFAULT_STORAGE) -> list[dict[str, Any]]:
    """``tuner trials NAME --format json``: one row per trial (number, state, value,
    ``params_*``, epochs, duration_s, started, retry_of, fail_reason)."""
    return load(name, storage=storage).trials()


def best_params(name: str, *, storage: str = DEFAULT_STORAGE) -> dict[str, Any]:
    """The params the best trial's code received (sampled values and constants): pass them
    to your own ``build`` or ``fit`` to train that configuration again."""
    return load(name, storage=storage).best_params


def retrain(name: str, *, trial: int | None = None, out: str | os.PathLike[str] | None = None,
            storage: str = DEFAULT_STORAGE, device: str = "auto",
            data_dir: str | os.PathLike[str] = "data", download: bool = True) -> Retrained:
    """``tuner retrain``: retrain ``trial`` (default: the best) on train+val, test it once
    on the held-out test split, and save its weights and model card in ``out`` (default
    ``runs/NAME/trial-N``). ``tuner.retrain.load_model(out)`` loads the model back."""
    from tuner import retrain as rt

    handle = load(name, storage=storage).handle
    runtime = make_runtime(storage, device, data_dir, None, False, download)
    with _quiet():
        return rt.retrain(handle, runtime, trial=trial, folder=out)
