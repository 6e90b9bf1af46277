"""A whole study, side by side: tuner's worker against a hand-written Optuna objective.

Both run the same study file (default ``search_spaces/mnist_mlp.yaml`` with ``--trials`` and
``--epochs``): the same search space, the same TPE sampler and seed, the same median pruner,
the same model, optimizer, schedule, initial weights and validation images.

  tuner         the real worker path: a SQLite study in a temporary folder,
                ``study.create_or_resume`` + ``worker.Worker.run`` (budget slots, heartbeats,
                per-epoch checkpoints); the data is loaded once and kept as tensors
  hand-written  ``optuna.create_study(...).optimize(objective, n_trials)``, the objective
                built on torchvision ``ToTensor()`` + ``DataLoader`` (``_common.py``)

Reported: wall time of the whole study (storage, data loading and every trial), the time
until some trial first reported ``--target`` validation accuracy (and until the first trial
that reached it finished, from the storage's completion timestamps), epochs trained, and the
best accuracy. Run from the repository root:

    TUNER_DATA_DIR=../shared/data .venv/bin/python benchmarks/study.py --trials 12 --epochs 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _common as c
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.config import StudySpec
from tuner.runtime.worker import Event, Worker
from tuner.settings import Settings
from tuner.storage import Heartbeat, connect
from tuner.study import build_pruner, build_sampler, create_or_resume
from tuner.trials import TrialRunner

PIPELINES = ("tuner", "hand-written")


@dataclass
class StudyRun:
    pipeline: str
    wall_s: float
    cpu_s: float  # this process and its exited children (the DataLoader workers)
    trials: list[FrozenTrial]
    clock: c.EpochClock
    started: float  # unix time when the study started (for the storage's timestamps)

    def count(self, state: TrialState) -> int:
        return sum(t.state == state for t in self.trials)

    @property
    def epochs(self) -> int:
        return sum(len(t.intermediate_values) for t in self.trials)

    @property
    def best(self) -> float | None:
        values = [t.value for t in self.trials if t.state == TrialState.COMPLETE]
        return max(values) if values else None

    def first_trial_reaching(self, target: float) -> float | None:
        """Seconds until the first trial with a reported value >= target had finished."""
        done = [t.datetime_complete.timestamp() - self.started for t in self.trials
                if t.datetime_complete is not None
                and max(t.intermediate_values.values(), default=-1.0) >= target]
        return min(done) if done else None


def run_tuner(spec: StudySpec, data_dir: str, device: torch.device, workdir: Path) -> StudyRun:
    clock = c.EpochClock()
    started, cpu = time.time(), c.cpu_seconds()
    storage = connect(f"sqlite:///{workdir / 'tuner.db'}")
    handle = create_or_resume(storage, spec)
    settings = Settings(device=str(device), data_dir=data_dir, download=False,
                        checkpoint_dir=str(workdir / "checkpoints"))

    def on_event(e: Event) -> None:
        if e.kind == "epoch" and e.epoch is not None and e.value is not None:
            clock.note(e.trial, e.epoch, e.value)

    Worker(handle, TrialRunner.of(spec, settings), heartbeat=Heartbeat(), on_event=on_event).run()
    wall, cpu = time.perf_counter() - clock.start, c.cpu_seconds() - cpu
    return StudyRun("tuner", wall, cpu, handle.study.get_trials(deepcopy=False), clock, started)


def run_handwritten(spec: StudySpec, data_dir: str, device: torch.device,
                    num_workers: int) -> StudyRun:
    clock = c.EpochClock()
    started, cpu = time.time(), c.cpu_seconds()
    study = optuna.create_study(direction=spec.direction_name, sampler=build_sampler(spec),
                                pruner=build_pruner(spec))
    objective = c.handwritten_objective(spec, data_dir, device, num_workers=num_workers,
                                        on_epoch=clock.note)
    study.optimize(objective, n_trials=spec.trials)
    wall, cpu = time.perf_counter() - clock.start, c.cpu_seconds() - cpu
    return StudyRun(f"hand-written ({num_workers} loader workers)", wall, cpu,
                    study.get_trials(deepcopy=False), clock, started)


def trial_lines(run: StudyRun, target: float) -> str:
    """One line per trial (to stderr): how each pipeline's study went."""
    lines = [f"{run.pipeline}:"]
    for t in run.trials:
        done = (t.datetime_complete.timestamp() - run.started) if t.datetime_complete else None
        reached = [e for e, v in sorted(t.intermediate_values.items()) if v >= target]
        p = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in t.params.items())
        lines.append(f"  trial {t.number:>2} {t.state.name:<8} epochs {len(t.intermediate_values)} "
                     f"value {t.value if t.value is not None else float('nan'):.4f} done at "
                     f"{c.fmt_s(done)} s"
                     f"{f', >= target at epoch {reached[0]}' if reached else ''}  {p}")
    return "\n".join(lines)


def report(runs: list[StudyRun], spec: StudySpec, target: float, device: torch.device) -> str:
    pct = f"{100 * target:g}%"
    headers = ["pipeline", "wall s", "CPU s", "complete", "pruned", "epochs", "s/epoch",
               f"first epoch >= {pct} s", f"first trial >= {pct} done s", "best val acc"]
    rows = []
    for r in runs:
        rows.append([r.pipeline, f"{r.wall_s:.1f}", f"{r.cpu_s:.0f}", r.count(TrialState.COMPLETE),
                     r.count(TrialState.PRUNED), r.epochs, f"{r.wall_s / max(r.epochs, 1):.2f}",
                     c.fmt_s(r.clock.first_reaching(target)),
                     c.fmt_s(r.first_trial_reaching(target)),
                     "-" if r.best is None else f"{r.best:.4f}"])
    head = (f"{spec.data} {spec.model}, {spec.trials} trials x up to {spec.epochs} epochs, "
            f"sampler {spec.sampler.name} seed {spec.seed}, pruner {spec.pruner.name}; "
            f"device {device}\n{c.machine(device)}")
    lines = [head, "", c.table(headers, rows)]
    by = {}
    for r in runs:
        by.setdefault(r.pipeline.split(" ")[0], []).append(r)
    if "tuner" in by and "hand-written" in by:
        ours = statistics.median(r.wall_s for r in by["tuner"])
        theirs = statistics.median(r.wall_s for r in by["hand-written"])
        per_epoch = (statistics.median(r.wall_s / max(r.epochs, 1) for r in by["hand-written"])
                     / statistics.median(r.wall_s / max(r.epochs, 1) for r in by["tuner"]))
        cpu = (statistics.median(r.cpu_s for r in by["hand-written"])
               / statistics.median(r.cpu_s for r in by["tuner"]))
        lines += ["", f"median wall time: tuner {ours:.1f} s, hand-written {theirs:.1f} s "
                      f"({theirs / ours:.2f}x); per epoch trained {per_epoch:.2f}x; "
                      f"CPU time {cpu:.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(c.REPO / "search_spaces" / "mnist_mlp.yaml"),
                        help="study file (data: mnist or fashion_mnist)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None, help="override the file's seed")
    parser.add_argument("--target", type=float, default=0.975,
                        help="validation accuracy for the time-to-target columns")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-workers", type=int, default=2,
                        help="DataLoader workers of the hand-written objective")
    parser.add_argument("--only", choices=PIPELINES, help="run one pipeline only")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the pair this many times, alternating (medians at the end)")
    parser.add_argument("--data-dir", default=c.DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    c.quiet_libraries()
    device = c.resolve_device(args.device)
    overrides = {"trials": args.trials, "epochs": args.epochs, "name": "bench_study"}
    if args.seed is not None:
        overrides["seed"] = args.seed
    spec = c.bench_spec(args.spec, **overrides)
    runs: list[StudyRun] = []
    with c.LoadMonitor() as load:
        for _ in range(args.repeat):
            if args.only in (None, "tuner"):
                with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
                    runs.append(run_tuner(spec, args.data_dir, device, Path(tmp)))
            if args.only in (None, "hand-written"):
                runs.append(run_handwritten(spec, args.data_dir, device, args.num_workers))
    for r in runs:
        print(trial_lines(r, args.target), file=sys.stderr)
    out = report(runs, spec, args.target, device) + "\n" + load.summary()
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
