"""What every launcher shares: the resources of one worker, the storage check, the command
that runs tuner, and finding the scheduler's own commands."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import LaunchError


@dataclass(frozen=True)
class Resources:
    """What one worker asks its scheduler for. ``mem`` is in the scheduler's own notation
    (Slurm ``16G``, Kubernetes ``16Gi``); None leaves it to the scheduler's default."""

    gpus: int = 0
    cpus: int = 1
    mem: str | None = None

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise LaunchError(f"--gpus-per-worker {self.gpus}: give 0 or more")
        if self.cpus < 1:
            raise LaunchError(f"--cpus-per-worker {self.cpus}: give 1 or more")


def check_workers(workers: int) -> None:
    if workers < 1:
        raise LaunchError(f"--workers {workers}: a launch needs at least 1 worker")


def require_command(name: str, fix: str) -> str:
    """The path of the scheduler command ``name``, or a LaunchError naming ``fix``."""
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"`{name}` is not on PATH: {fix}")
    return found


def shareable_url(url: str, *, sqlite_ok: bool) -> str:
    """``url`` checked for workers on other machines: a database server, or (``sqlite_ok``)
    a SQLite file given by its absolute path so every task opens the same file."""
    from tuner.storage import normalize_url

    parsed = normalize_url(url)  # malformed, in-memory or a missing folder: StorageError
    if parsed.drivername != "sqlite":
        return url
    if not sqlite_ok:
        raise LaunchError(f"--storage {url}: pods share no SQLite file; use a PostgreSQL or "
                          "MySQL URL, or --with-postgres to run one in the cluster")
    db = str(Path(parsed.database).expanduser().resolve())
    return parsed.set(database=db).render_as_string(hide_password=False)


def tuner_command(python: str | None = None, venv: str | None = None,
                  command: str | None = None) -> tuple[str, ...]:
    """How a task runs tuner: ``python -m tuner`` for an interpreter or a virtual
    environment, or a whole command line (``apptainer exec tuner.sif tuner``); default, the
    interpreter running this process (its venv, not the file the link points at)."""
    given = [name for name, v in (("--python", python), ("--venv", venv),
                                  ("--tuner-command", command)) if v]
    if len(given) > 1:
        raise LaunchError(f"{' and '.join(given)} both say how to run tuner; give one")
    if command:
        argv = tuple(shlex.split(command))
        if not argv:
            raise LaunchError("--tuner-command is empty; give the command that runs tuner")
        return argv
    if venv:
        python = str(Path(venv).expanduser().absolute() / "bin" / "python")
        if not os.access(python, os.X_OK):
            raise LaunchError(f"--venv {venv}: no bin/python in it; give the folder of a "
                              "virtual environment with tuner installed")
    if python and "/" in python:  # a bare name is looked up on the task's PATH
        python = str(Path(python).expanduser().absolute())
    return (python or sys.executable, "-m", "tuner")
