"""What every launcher shares: the resources of one worker, the storage check, the command
that runs tuner, finding the scheduler's own commands, and the checks of every value that
goes into a script or a manifest (each validated for its place, before anything is written:
Slurm's memory, time and partition notations; Kubernetes' DNS-1123 names and quantities)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tuner import gate
from tuner.errors import LaunchError, TunerError

# re.ASCII throughout: \d would take any Unicode digit, which no scheduler reads
SLURM_MEM = re.compile(r"[0-9]+[KMGT]?", re.ASCII)  # sbatch --mem: 16G, 16000 (MB), 0 (all)
SLURM_PARTITION = re.compile(r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*", re.ASCII)  # p or p1,p2
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)  # namespaces, Services
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
                           re.ASCII)  # Secrets, claims, StorageClasses (up to 253)
SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}", re.ASCII)
# a Kubernetes quantity as a person writes one: 16Gi, 512Mi, 1.5G, 500m, 1e9
QUANTITY = re.compile(r"([0-9]+(\.[0-9]+)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][0-9]+)?",
                      re.ASCII)


def one_line(value: str, option: str) -> str:
    """``value`` with no newline or other control character (it goes on one line of a
    script or into one manifest field)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise LaunchError(f"{option} {value!r}: holds a newline or another control "
                          "character; give it on one line")
    return value


def matches(value: str | None, pattern: re.Pattern[str], option: str, want: str) -> str | None:
    """``value`` (None passes) if ``pattern`` matches all of it, else a LaunchError that
    says what the place takes (``want``)."""
    if value is not None and not pattern.fullmatch(value):
        raise LaunchError(f"{option} {value!r}: {want}")
    return value


def dns_name(value: str | None, option: str, *, label: bool = False) -> str | None:
    """A Kubernetes object name: a DNS-1123 label (namespaces: 63 characters) or subdomain."""
    if label:
        return matches(value, DNS_LABEL, option, "not a DNS-1123 label: lower-case letters, "
                       "digits and '-', starting and ending with a letter or digit, at most 63")
    if value is not None and len(value) > 253:
        raise LaunchError(f"{option}: {len(value)} characters; a Kubernetes name has at most 253")
    return matches(value, DNS_SUBDOMAIN, option, "not a Kubernetes name: lower-case letters, "
                   "digits, '-' and '.', starting and ending with a letter or digit")


def quantity(value: str | None, option: str) -> str | None:
    """A Kubernetes resource quantity (16Gi, 512Mi, 1.5G)."""
    return matches(value, QUANTITY, option, "not a Kubernetes quantity; e.g. 16Gi, 512Mi or 2G")


def study(value: str, option: str = "study") -> str:
    """A study name given on the command line of a launch."""
    try:
        return gate.study_name(value, option)
    except TunerError as e:
        raise LaunchError(str(e)) from None


def device(value: str) -> str:
    """The workers' device, refused here (not in every worker) when it is none of tuner's."""
    try:
        return gate.device(value)
    except TunerError as e:
        raise LaunchError(str(e)) from None


def out_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """A folder the launch writes into, checked before anything is created or submitted."""
    one_line(str(path), option)
    try:
        return gate.writable_folder(path, option)
    except TunerError as e:
        raise LaunchError(str(e)) from None


@dataclass(frozen=True)
class Resources:
    """What one worker asks its scheduler for. ``mem`` is in the scheduler's own notation
    (Slurm ``16G``, Kubernetes ``16Gi``); None leaves it to the scheduler's default."""

    gpus: int = 0
    cpus: int = 1
    mem: str | None = None

    def __post_init__(self) -> None:
        if self.mem is not None:
            one_line(self.mem, "--mem")
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
