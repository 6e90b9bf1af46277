"""The ``tuner`` command line: the only package that prints and exits. Commands parse, call
:mod:`tuner.api` and print; none re-implements it.

    _common   the app, options, error handling, consoles
    run       run, resume, worker
    read      studies, trials, best, status, check, delete
    after     dashboard, report, retrain

Each command module registers its commands on the one app when imported here.
"""

from __future__ import annotations

from tuner.cli import after, read, run  # noqa: F401  (each registers its commands)
from tuner.cli._common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
