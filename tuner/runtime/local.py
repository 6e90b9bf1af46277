"""Worker processes on this machine (``tuner run --workers K``): one device each, settings
passed serialised in the environment, SIGTERM forwarded, exit codes collected."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tuner.errors import DeviceBroken, SpawnFailed, TunerError
from tuner.settings import Settings
from tuner.threads import wait_env

# the child's settings and study, as JSON (not argv: a storage URL may hold a password)
CHILD_ENV = "TUNER_CHILD"


def assign_devices(workers: int, device: str, gpus: int,
                   per_gpu: int | None) -> list[dict[str, str]]:
    """Environment for each local worker. With GPUs and ``device`` auto/cuda, worker i gets
    one GPU through CUDA_VISIBLE_DEVICES: round-robin by default (GPU ``i % gpus``, so 6
    workers on 4 GPUs leave none idle), or in blocks of ``per_gpu`` (GPU ``i // per_gpu``)."""
    if gpus == 0 or device == "cpu" or device.startswith("cuda:"):
        return [{} for _ in range(workers)]
    if per_gpu is None:
        return [{"CUDA_VISIBLE_DEVICES": str(i % gpus)} for i in range(workers)]
    if workers > per_gpu * gpus:
        raise TunerError(
            f"--workers {workers} with --workers-per-gpu {per_gpu} needs "
            f"{-(-workers // per_gpu)} GPUs but {gpus} are visible; lower --workers or raise "
            "--workers-per-gpu"
        )
    return [{"CUDA_VISIBLE_DEVICES": str(i // per_gpu)} for i in range(workers)]


def _visible_device(index: str, parent: str | None) -> str:
    """GPU ``index`` as counted by this process -> its name in the parent's
    CUDA_VISIBLE_DEVICES, kept as written: ``"2,3"`` (GPU 1 here is GPU 3 of the machine),
    UUIDs (``GPU-5d3c...``) or MIG instances (``MIG-...``). CUDA stops counting at the first
    name it cannot use, as torch's device_count does, so the index is always in the list."""
    if not parent:
        return index
    names = [d.strip() for d in parent.split(",") if d.strip()]
    if not names:
        return index
    return names[int(index) % len(names)]


def spawn(name: str, settings: Settings, envs: list[dict[str, str]]) -> list[subprocess.Popen[bytes]]:
    """Start one worker process of study ``name`` per env (``python -m tuner.child``), each
    with its share of the CPUs (:mod:`tuner.threads`). If
    one cannot start (no memory, too many processes), those already started are stopped
    and SpawnFailed says so: no worker is left behind."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, env in enumerate(envs):
            procs.append(_spawn_one(name, settings, env, i, len(envs)))
    except OSError as e:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        raise SpawnFailed(f"could not start worker {len(procs) + 1} of {len(envs)} "
                          f"({e.strerror or e}); the {len(procs)} started were stopped. Lower "
                          "--workers, or free memory and processes on this machine") from e
    return procs


def _spawn_one(name: str, settings: Settings, env: dict[str, str],
               index: int, workers: int) -> subprocess.Popen[bytes]:
    env = dict(env)
    if "CUDA_VISIBLE_DEVICES" in env:
        env["CUDA_VISIBLE_DEVICES"] = _visible_device(env["CUDA_VISIBLE_DEVICES"],
                                                      os.environ.get("CUDA_VISIBLE_DEVICES"))
    env[CHILD_ENV] = json.dumps({"study": name, "worker_index": index, "local_workers": workers,
                                 "settings": settings.to_json()})
    # OpenMP reads its wait policy when torch loads: set before the child imports anything
    return subprocess.Popen([sys.executable, "-m", "tuner.child"],
                            env={**os.environ, **wait_env(), **env})


# fresh processes started for one worker slot whose GPU context broke (DeviceBroken), at most
MAX_RESPAWNS = 3


def run_local(name: str, settings: Settings, workers: int, per_gpu: int | None = None,
              poll: Callable[[], None] | None = None) -> None:
    """Run study ``name`` with ``workers`` worker processes on this machine, one device each,
    calling ``poll`` every second until they end."""
    gpus = 0
    if settings.device != "cpu":
        import torch

        gpus = torch.cuda.device_count()
    envs = assign_devices(workers, settings.device, gpus, per_gpu)
    device = "cuda" if gpus and settings.device == "cuda" else settings.device
    settings = settings.replace(device=device)
    procs = spawn(name, settings, envs)
    respawns = 0
    with _forward_sigterm(procs):
        try:
            while True:
                for i, p in enumerate(procs):  # a broken CUDA context: a fresh process
                    if p.poll() == DeviceBroken.exit_code and respawns < MAX_RESPAWNS:
                        respawns += 1
                        procs[i] = _spawn_one(name, settings, envs[i], i, len(envs))
                if all(p.poll() is not None for p in procs):
                    break
                if poll is not None:
                    poll()
                # back as soon as a worker ends, or after a second (the next poll)
                try:
                    next(p for p in procs if p.poll() is None).wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
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
