"""The exceptions of tuner. Every message says what went wrong and how to fix it.

    TunerError                 base; ``str(err)`` is one line that names the fix
    ├── SpecError              the study file (YAML) is malformed or invalid
    ├── StorageError           the storage URL is malformed, unreachable or refused
    │   └── DatabaseUnreachable  the database stayed unreachable past --db-patience
    ├── StudyNotFound          no study of that name in the storage
    ├── SpecMismatch           resuming a study with a different study file
    ├── DataError              a dataset cannot be found, downloaded or loaded
    ├── UserCodeError          a user's model/data/trainer import path or signature is wrong
    └── TooManyFailures        several trials failed in a row; the study was stopped

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


class StudyNotFound(TunerError):
    pass


class SpecMismatch(TunerError):
    pass


class DataError(TunerError):
    pass


class UserCodeError(TunerError):
    pass


class TooManyFailures(TunerError):
    exit_code = 1
