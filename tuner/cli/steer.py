"""Steering a running study from a script: stop, pause, continue, extend, stop-trial, retry.
The console's buttons call the same functions (:mod:`tuner.results.controls`); every worker obeys
within one heartbeat."""

from __future__ import annotations

from typing import Annotated

import typer

from tuner.cli._common import (
    DEFAULT_STORAGE,
    Storage,
    _one_line_errors,
    _open,
    app,
    command,
    out,
)

Name = Annotated[str, typer.Argument(help="Study name.")]
Number = Annotated[int, typer.Argument(min=0, help="Trial number.")]


def _load(name: str, storage: str):  # noqa: ANN202 - a Handle, imported late
    from tuner import study as st

    return st.load(_open(storage, "existing"), name, wait_s=0)  # steering writes controls


@command
def stop(name: Name, storage: Storage = DEFAULT_STORAGE) -> None:
    """Stop a study: no new trials; running trials checkpoint at their next epoch and wait to
    resume; workers exit 0."""
    from tuner.results import controls

    controls.stop(_load(name, storage))
    out().print(f"study {name}: stopping (workers checkpoint and exit within a heartbeat); "
                f"to go on later: `tuner continue {name}` then `tuner resume {name}`",
                highlight=False, soft_wrap=True)


@command
def pause(name: Name, storage: Storage = DEFAULT_STORAGE) -> None:
    """Pause a study: workers stay, running trials go on, no new trial starts."""
    from tuner.results import controls

    controls.pause(_load(name, storage))
    out().print(f"study {name}: paused (running trials go on); `tuner continue {name}` "
                "to take new trials again", highlight=False, soft_wrap=True)


@app.command("continue")
@_one_line_errors
def continue_(name: Name, storage: Storage = DEFAULT_STORAGE) -> None:
    """Undo `tuner pause` or `tuner stop`: workers take new trials again."""
    from tuner.results import controls

    controls.go_on(_load(name, storage))
    out().print(f"study {name}: going on (after a stop, start workers with `tuner resume "
                f"{name}`)", highlight=False, soft_wrap=True)


@command
def extend(
    name: Name,
    trials: Annotated[int | None, typer.Option(help="More trials.")] = None,
    minutes: Annotated[float | None, typer.Option(help="More minutes before the deadline.")
                       ] = None,
    hours: Annotated[float | None, typer.Option(help="More device-hours.")] = None,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Give a running study more trials, time or device-hours; its workers go on."""
    from tuner.results import controls

    ext = controls.Extension(trials, None if minutes is None else minutes * 60, hours)
    b = controls.extend(_load(name, storage), ext)
    parts = [f"{b.taken}/{b.target} trials" if b.target is not None else None,
             f"{b.hours_left:.3g} device-hours left" if b.hours_left is not None else None]
    out().print(f"study {name}: extended; " + ", ".join(p for p in parts if p),
                highlight=False, soft_wrap=True)


@command
def stop_trial(name: Name, number: Number, storage: Storage = DEFAULT_STORAGE) -> None:
    """Stop one running trial at its next epoch; it keeps its checkpoint (`tuner retry`
    resumes it)."""
    from tuner.results import controls

    controls.stop_trial(_load(name, storage), number)
    out().print(f"trial {number} of {name}: stops at its next epoch", highlight=False)


@command
def retry(name: Name, number: Number, storage: Storage = DEFAULT_STORAGE) -> None:
    """Run a failed or stopped trial again from its checkpoint (one trial more)."""
    from tuner.results import controls

    controls.retry(_load(name, storage), number)
    out().print(f"trial {number} of {name}: queued again; a worker takes it next",
                highlight=False)
