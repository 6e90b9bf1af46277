"""The live progress display of ``tuner run`` (part of the CLI layer: it draws on a console).

Fed either by a worker's events (one process) or by snapshots of the database (several
worker processes); both end in the same panel: trials done/total, the running trials and
their epochs, best so far, elapsed time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from tuner.results.status import Snapshot
from tuner.runtime.worker import Event


@dataclass
class _State:
    done: int = 0
    total: int | None = None
    best: float | None = None
    best_trial: int | None = None
    pruned: int = 0
    failed: int = 0
    paused: int = 0  # ASHA/PBT segments that paused in this process (their trials go on)
    running: dict[int, tuple[int, float | None]] = field(default_factory=dict)  # trial -> epoch


class ProgressView:
    def __init__(self, console: Console, name: str, metric: str, direction: str,
                 max_epochs: int, done: int, total: int | None, best: float | None = None,
                 best_trial: int | None = None):
        self.console, self.name, self.metric = console, name, metric
        self.direction, self.max_epochs = direction, max_epochs
        self.state = _State(done=done, total=total, best=best, best_trial=best_trial)
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("trials"), TimeElapsedColumn(),
                            console=console)
        self.task = self.bar.add_task(escape(name), total=total, completed=done)
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
        self._last = 0.0

    def __enter__(self) -> ProgressView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh(force=True)
        self.live.__exit__(*exc)
        self.console.line()

    def _better(self, value: float) -> bool:
        best = self.state.best
        return best is None or (value > best if self.direction == "maximize" else value < best)

    def event(self, e: Event) -> None:
        s = self.state
        if e.kind == "started":
            s.running[e.trial] = (0, None)
        elif e.kind == "epoch":
            s.running[e.trial] = (e.epoch or 0, e.value)
        elif e.kind == "finished" and e.state == "PAUSED":  # ASHA/PBT: it goes on later
            s.running.pop(e.trial, None)
            s.paused += 1
        elif e.kind == "finished":
            s.running.pop(e.trial, None)
            s.done += 1
            s.pruned += e.state == "PRUNED"
            s.failed += e.state == "FAIL"
            if e.state == "FAIL":
                s.done -= 1  # failed trials do not spend the budget
            if e.state == "COMPLETE" and e.value is not None and self._better(e.value):
                s.best, s.best_trial = e.value, e.trial
        self.refresh()

    def snapshot(self, snap: Snapshot) -> None:
        s = self.state
        s.done, s.best, s.best_trial = snap.finished, snap.best_value, snap.best_trial
        s.pruned, s.failed = snap.counts.get("PRUNED", 0), snap.counts.get("FAIL", 0)
        s.total = snap.budget.target
        s.running = {r.number: (r.epoch, r.last_value) for r in snap.running}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last > 0.2:
            self._last = now
            self.bar.update(self.task, completed=self.state.done, total=self.state.total)
            self.live.update(self._render())

    def _render(self) -> Group:
        s = self.state
        best = "—" if s.best is None else f"{s.best:.4f} (trial {s.best_trial})"
        lines = [self.bar,
                 Text(f"  best {self.metric} {best}   pruned: {s.pruned}   failed: {s.failed}"
                      + (f"   paused segments: {s.paused}" if s.paused else ""))]
        for n, (epoch, value) in sorted(s.running.items()):
            v = "" if value is None else f"  val {value:.4f}"
            lines.append(Text(f"  trial {n}: epoch {epoch}/{self.max_epochs}{v}", style="dim"))
        return Group(*lines)
