"""The settings of one tuner process: read once at the edge (CLI options, environment,
Python keyword arguments), frozen, and passed down. Local worker processes receive them
serialised (:meth:`Settings.to_json`), never as command-line flags. Plain data: the one
place each default is written."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from tuner.errors import TunerError
from tuner.threads import parse as parse_threads

DEFAULT_URL = "sqlite:///tuner.db"
DEFAULT_DATA_DIR = "data"
CHECKPOINT_FOLDER = "tuner_checkpoints"
_COUNT = re.compile(r"[0-9]{1,6}")  # ASCII digits: str.isdigit() takes '²' and '٣' too


@dataclass(frozen=True)
class Heartbeat:
    """How often running trials say they are alive, and how long silence means death (s)."""

    interval: int = 5
    grace_period: int = 20

    def __post_init__(self) -> None:
        # a grace period no longer than the interval would fail live trials between beats
        if self.grace_period <= self.interval:
            object.__setattr__(self, "grace_period", self.interval + 1)


@dataclass(frozen=True)
class Settings:
    storage: str = DEFAULT_URL
    device: str = "cpu"  # cpu | cuda | cuda:N (``auto`` is resolved before a Settings is made)
    data_dir: str = DEFAULT_DATA_DIR  # where datasets live (TUNER_DATA_DIR)
    # per-epoch checkpoints, shared by every worker of a study
    checkpoint_dir: str = CHECKPOINT_FOLDER
    keep_checkpoints: bool = False  # keep the checkpoints of completed trials
    download: bool = True  # fetch missing torchvision datasets into data_dir
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    # seconds a worker rides out an unreachable database (training on, reports held)
    db_patience: int = 300
    # seconds a running trial may go without a finished epoch before it counts as hung
    # (failed and retried elsewhere, like a dead worker's); None: no limit
    stall_timeout: int | None = None
    # same-shape trials trained as one (--fuse): "auto", "off" or K; None: the study's fuse:
    fuse: str | None = None
    # torch CPU threads of each worker (--threads); None: fit the CPUs it may use (threads.py)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.stall_timeout is not None and self.stall_timeout <= self.heartbeat.interval:
            raise TunerError(
                f"--stall-timeout {self.stall_timeout} is not above the heartbeat interval "
                f"({self.heartbeat.interval} s); give more than the longest epoch, at least "
                f"{self.heartbeat.interval + 1}")
        if self.db_patience < self.heartbeat.interval:
            raise TunerError(
                f"--db-patience {self.db_patience} is below the heartbeat interval "
                f"({self.heartbeat.interval} s); give at least {self.heartbeat.interval}")

        if self.fuse is not None and not (self.fuse in ("auto", "off") or (
                _COUNT.fullmatch(self.fuse) and int(self.fuse) >= 1)):
            raise TunerError(f"--fuse {self.fuse}: give auto, off or a number of trials K "
                             "(e.g. --fuse 4)")

        if self.threads is not None:
            parse_threads(self.threads)  # the one check, for the CLI and Python callers alike

    def fuse_mode(self, study: str | int) -> str | int:
        """What this process fuses: --fuse when given, else the study's ``fuse:``."""
        if self.fuse is None:
            return study
        return int(self.fuse) if _COUNT.fullmatch(self.fuse) else self.fuse

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        raw = json.loads(text)
        return cls(**{**raw, "heartbeat": Heartbeat(**raw["heartbeat"])})
