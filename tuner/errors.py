"""The exceptions of tuner. Every message says what went wrong and how to fix it.

    TunerError                 base; ``str(err)`` is one line that names the fix
    ├── SpecError              the study file (YAML) is malformed or invalid
    ├── StorageError           the storage URL is malformed, unreachable or refused
    │   ├── DatabaseUnreachable  the database stayed unreachable past --db-patience
    │   └── NoDatabase     a command that only reads found no database there (none created)
    ├── StudyNotFound          no study of that name in the storage
    ├── SpecMismatch           resuming a study with a different study file
    ├── DataError              a dataset cannot be found, downloaded or loaded
    ├── UserCodeError          a user's model/data/trainer import path or signature is wrong
    ├── LaunchError            a launch onto a scheduler (Slurm, Kubernetes) cannot go ahead:
    │                          its command is missing, an option is wrong, sbatch refused
    ├── SpawnFailed            a local worker process could not be started (the others stopped)
    ├── CheckpointUnwritable   a checkpoint cannot be written (folder full, unwritable, a file)
    ├── TooManyFailures        several trials failed in a row; the study was stopped
    ├── DeviceBroken           a CUDA device-side assert broke this process's GPU context
    └── TrialStalled           a trial finished no epoch for --stall-timeout seconds

Only ``tuner.cli`` turns these into a printed line and an exit code.
"""

from __future__ import annotations


class TunerError(Exception):
    """Base class: a problem the user can fix. The message is one line."""

    exit_code = 2


class SpecError(TunerError):
    pass


class StorageError(TunerError):
    pass


class DatabaseUnreachable(StorageError):
    pass


class NoDatabase(StorageError):
    pass


class StudyNotFound(TunerError):
    pass


class SpecMismatch(TunerError):
    pass


class DataError(TunerError):
    pass


class UserCodeError(TunerError):
    pass


class LaunchError(TunerError):
    pass


class SpawnFailed(TunerError):
    pass


class CheckpointUnwritable(TunerError):
    """Raised by a checkpoint save that the disk refused; the worker queues the trial's
    retry (from its last good checkpoint, writes being atomic) and exits."""


class TooManyFailures(TunerError):
    exit_code = 1


class DeviceBroken(TunerError):
    """The CUDA context of this process is unusable (a device-side assert): the worker exits
    with ``exit_code`` so that a fresh process takes over (``tuner run --workers K`` starts
    one; a supervisor such as Docker's restart policy does the same)."""

    exit_code = 75  # EX_TEMPFAIL: try again in a new process


class TrialStalled(TunerError):
    """A trial hung (no finished epoch for ``--stall-timeout`` s) while its worker lived: the
    worker fails it, queues its retry and exits with ``exit_code`` (its main thread is stuck
    in the training loop, so the process cannot be reused)."""

    exit_code = 75  # EX_TEMPFAIL, as DeviceBroken: a fresh process takes over
