"""The ``tuner`` command line: the only package that prints and exits. Commands parse, call
:mod:`tuner.api` and print; none re-implements it.

    _common   the app, options, error handling, consoles
    run       run, resume, worker
    read      studies, trials, best, status, check, delete
    steer     stop, pause, continue, extend, stop-trial, retry
    after     dashboard, report, retrain
    launch    launch slurm, launch k8s (a sub-app)

Each command module registers its commands on the one app when imported here.
"""

from __future__ import annotations

from tuner.cli import after, read, run, steer  # noqa: F401  (each registers its commands)
from tuner.cli._common import app
from tuner.cli.launch import launch_app

app.add_typer(launch_app, name="launch")

__all__ = ["app", "main"]


def main() -> None:
    """Run the command line; then exit without collecting the garbage of the interpreter's
    last moments: a process that imported torch spent about 3 s of a worker's exit there,
    walking objects its operating system frees at once anyway."""
    import gc
    import os

    from tuner.threads import wait_env

    # OpenMP reads its wait policy once, when torch loads (inside a command): set it first,
    # unless the user has
    os.environ.update(wait_env())
    try:
        app()
    finally:
        gc.freeze()
