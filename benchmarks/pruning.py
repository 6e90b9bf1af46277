"""Pruning: epochs saved against accuracy lost, for tuner's pruners against no pruning.

``--configs`` configurations are drawn once from the study file's space with Optuna's
RandomSampler (``--seeds``); each pruner then trains that same list, in the same order, through
tuner's own trial path (``tuner.trials.TrialRunner.run``: the same data, kept on the device and
loaded once, the same model, the same initial weights per trial number). A configuration that
survives a pruner therefore ends with the same accuracy it has without pruning (the "same"
column checks it), and the best accuracy can only drop when a pruner stops the configuration
that would have won.

Because of that, ``--replay`` trains only the no-pruning run and lets each pruner decide on
its recorded learning curves (report, then ask whether to prune, every epoch, as tuner's
trial reporter does): the same decisions in a quarter of the time, with each pruner's time
summed from the recorded epochs it ran.

The pruners are tuner's (``study.build_pruner``), with the study file's settings unless
``--min-epochs`` / ``--reduction-factor`` / ``--median-startup`` say otherwise. Run from the
repository root:

    TUNER_DATA_DIR=../shared/data .venv/bin/python benchmarks/pruning.py --configs 12 --epochs 6
    .venv/bin/python benchmarks/pruning.py --data digits      # a quick run, no files needed
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import _common as c
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.config import StudySpec, space
from tuner.study import build_pruner
from tuner.training.assets import StudyAssets
from tuner.trials import TrialRunner

PRUNERS = ("none", "median", "successive_halving", "hyperband")
SPECS = {"mnist": "mnist_mlp.yaml", "digits": "digits_mlp.yaml",
         "fashion_mnist": "fashion_mnist_mlp.yaml"}


@dataclass
class PrunerRun:
    pruner: str
    seed: int
    wall_s: float
    cpu_s: float
    trials: list[FrozenTrial]
    replayed: bool = False  # decided on recorded curves: "same" holds by construction

    @property
    def epochs(self) -> int:
        return sum(len(t.intermediate_values) for t in self.trials)

    @property
    def finals(self) -> dict[int, float]:
        """Final value of each configuration that ran to the end, by its index in the list."""
        return {t.number: t.value for t in self.trials
                if t.state == TrialState.COMPLETE and t.value is not None}

    def best(self, maximize: bool) -> float | None:
        values = list(self.finals.values())
        return (max(values) if maximize else min(values)) if values else None


def sample_configs(spec: StudySpec, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn at random from the space (Optuna's params: constants and
    inactive conditionals left out, as ``enqueue_trial`` wants them)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial, spec)
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    return configs


# what one epoch of one configuration reported and cost: (epoch, value, wall s, CPU s)
Curve = list[tuple[int, float, float, float]]


def _pruner_study(spec: StudySpec, name: str, configs: list[dict[str, Any]],
                  seed: int) -> tuple[StudySpec, optuna.Study]:
    spec = spec.model_copy(update={"pruner": spec.pruner.model_copy(update={"name": name})})
    # the same study name for every pruner: Hyperband puts a trial in a bracket by hashing
    # the study name with the trial number, so each pruner sees the same brackets across runs
    study = optuna.create_study(study_name="pruning-bench", direction=spec.direction_name,
                                sampler=optuna.samplers.RandomSampler(seed=seed),
                                pruner=build_pruner(spec))
    for params in configs:
        study.enqueue_trial(params)
    return spec, study


def run_pruner(spec: StudySpec, name: str, configs: list[dict[str, Any]], seed: int,
               assets: StudyAssets) -> tuple[PrunerRun, list[Curve]]:
    """Train ``configs`` in order under pruner ``name`` with tuner's trial path; also returns
    each configuration's learning curve with what each epoch cost (set-up counts in epoch 1)."""
    spec, study = _pruner_study(spec, name, configs, seed)
    curves: list[Curve] = []
    last = [0.0, 0.0]  # wall and CPU clocks at the previous report

    def on_epoch(_trial: int, epoch: int, value: float) -> None:
        now = [time.perf_counter(), c.cpu_seconds()]
        curves[-1].append((epoch, value, now[0] - last[0], now[1] - last[1]))
        last[:] = now

    assets.spec = spec  # the same data and code, this pruner's copy of the spec
    objective = TrialRunner(assets, checkpoint_dir="unused", stop=threading.Event(),
                            on_epoch=on_epoch)
    start, cpu = time.perf_counter(), c.cpu_seconds()
    for _ in configs:
        trial = study.ask()
        curves.append([])
        last[:] = [time.perf_counter(), c.cpu_seconds()]
        outcome = objective.run(trial)
        if outcome.state == TrialState.COMPLETE:
            study.tell(trial, outcome.value)
        else:
            study.tell(trial, state=outcome.state)
        curve = curves[-1]
        print(f"  {name}, seed {seed}: trial {trial.number} {outcome.state.name} after "
              f"{len(curve)} epochs ({sum(e[2] for e in curve):.1f} s), last value "
              f"{curve[-1][1] if curve else float('nan'):.4f} {outcome.fail_reason or ''}",
              file=sys.stderr)
    run = PrunerRun(name, seed, time.perf_counter() - start, c.cpu_seconds() - cpu,
                    study.get_trials(deepcopy=False))
    return run, curves


def replay_pruner(spec: StudySpec, name: str, configs: list[dict[str, Any]], seed: int,
                  curves: list[Curve]) -> PrunerRun:
    """Pruner ``name`` deciding on the learning curves recorded without pruning, as tuner's
    trial reporter does (report, then ask whether to prune, every epoch). Training is
    deterministic per configuration, so the decisions are those of a real run; the times
    are the recorded epochs' times."""
    _, study = _pruner_study(spec, name, configs, seed)
    wall = cpu = 0.0
    for curve in curves:
        trial = study.ask()
        state = TrialState.COMPLETE
        for epoch, value, epoch_wall, epoch_cpu in curve:
            wall, cpu = wall + epoch_wall, cpu + epoch_cpu
            trial.report(value, epoch)
            if trial.should_prune():
                state = TrialState.PRUNED
                break
        if state == TrialState.COMPLETE:
            study.tell(trial, curve[-1][1])
        else:
            study.tell(trial, state=state)
    return PrunerRun(name, seed, wall, cpu, study.get_trials(deepcopy=False), replayed=True)


def report(runs: list[PrunerRun], spec: StudySpec, n: int, device: torch.device) -> str:
    maximize = spec.direction_name == "maximize"
    metric = spec.metric_name
    base = {r.seed: r for r in runs if r.pruner == "none"}
    headers = ["pruner", "epochs", "saved", "complete", "pruned", f"best {metric}",
               f"{metric} lost", "kept the best", "same", "wall s", "CPU s", "saved CPU"]
    rows = []
    for name in dict.fromkeys(r.pruner for r in runs):
        mine = [r for r in runs if r.pruner == name]
        epochs = sum(r.epochs for r in mine)
        full = sum(base[r.seed].epochs for r in mine) if all(r.seed in base for r in mine) \
            else n * spec.epochs * len(mine)
        bests = [r.best(maximize) for r in mine]
        lost, kept, same = [], 0, True
        for r in mine:
            ref = base.get(r.seed)
            if ref is None:
                continue
            b, rb = r.best(maximize), ref.best(maximize)
            if b is not None and rb is not None:
                lost.append((rb - b) if maximize else (b - rb))
            winner = max(ref.finals, key=ref.finals.get) if maximize and ref.finals else (
                min(ref.finals, key=ref.finals.get) if ref.finals else None)
            kept += winner in r.finals
            # the configurations that ran to the end should end as they did without pruning
            same &= all(abs(v - ref.finals.get(i, v)) < 1e-9 for i, v in r.finals.items())
        wall, cpu = sum(r.wall_s for r in mine), sum(r.cpu_s for r in mine)
        base_cpu = sum(base[r.seed].cpu_s for r in mine if r.seed in base)
        rows.append([
            name, epochs, f"{1 - epochs / full:.0%}" if full else "-",
            sum(sum(t.state == TrialState.COMPLETE for t in r.trials) for r in mine),
            sum(sum(t.state == TrialState.PRUNED for t in r.trials) for r in mine),
            _mean(bests), _mean(lost, signed=True) if lost else "-",
            f"{kept}/{len(mine)}" if lost else "-",
            "replayed" if all(r.replayed for r in mine) else ("yes" if same else "NO"),
            f"{wall:.1f}", f"{cpu:.0f}", f"{1 - cpu / base_cpu:.0%}" if base_cpu else "-",
        ])
    p = spec.pruner
    seeds = sorted({r.seed for r in runs})
    head = (f"{spec.data} {spec.model}: {n} random configurations x {spec.epochs} epochs, "
            f"config seeds {seeds}; median n_startup_trials={p.n_startup_trials}, "
            f"min_epochs={p.min_epochs}, reduction_factor={p.reduction_factor}; device {device}"
            f"\n{c.machine(device)}")
    note = ("epochs: trained in all; saved: of the epochs without pruning; lost: best without "
            "pruning minus best with it (mean over seeds); kept the best: seeds where the "
            "configuration that wins without pruning was not pruned; same: surviving "
            "configurations ended with the accuracy they had without pruning; CPU s: user + "
            "system time of the process, steadier than wall time on a shared machine")
    return "\n".join([head, "", c.table(headers, rows), "", note])


def _mean(values: list[float | None], signed: bool = False) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    m = statistics.fmean(vals)
    return f"{m:+.4f}" if signed else f"{m:.4f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=sorted(SPECS),
                        help="picks search_spaces/<data>_mlp.yaml unless --spec is given")
    parser.add_argument("--spec", help="study file whose space the configurations come from")
    parser.add_argument("--configs", type=int, default=12, help="configurations per seed")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of a configuration that is never pruned [file's]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one list of configurations per seed (RandomSampler seed)")
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS), choices=PRUNERS)
    parser.add_argument("--min-epochs", type=int, help="pruner min_epochs [file's]")
    parser.add_argument("--reduction-factor", type=int, help="SHA/Hyperband factor [file's]")
    parser.add_argument("--median-startup", type=int,
                        help="trials the median pruner lets finish first [file's]")
    parser.add_argument("--replay", action="store_true",
                        help="train once without pruning, then let each pruner decide on the "
                             "recorded learning curves (same decisions, a quarter of the time)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-dir", default=c.DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    c.quiet_libraries()
    device = c.resolve_device(args.device)
    path = args.spec or str(c.REPO / "search_spaces" / SPECS[args.data])
    base = c.bench_spec(path)
    pruner = base.pruner.model_dump()
    for key, value in (("min_epochs", args.min_epochs), ("reduction_factor", args.reduction_factor),
                       ("n_startup_trials", args.median_startup)):
        if value is not None:
            pruner[key] = value
    overrides: dict[str, Any] = {"name": "pruning_bench", "pruner": pruner, "checkpoint": False}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    spec = c.bench_spec(path, **overrides)
    pruners = ["none", *[p for p in args.pruners if p != "none"]]  # the baseline first
    # one worker's assets: the data is loaded once and reused by every pruner and seed
    assets = StudyAssets(spec, device=str(device), data_dir=args.data_dir, download=False)
    runs = []
    with c.LoadMonitor() as load:
        for seed in args.seeds:
            configs = sample_configs(spec, args.configs, seed)
            baseline, curves = run_pruner(spec, "none", configs, seed, assets)
            runs.append(baseline)
            for name in pruners[1:]:
                if args.replay:
                    runs.append(replay_pruner(spec, name, configs, seed, curves))
                else:
                    runs.append(run_pruner(spec, name, configs, seed, assets)[0])
    how = ("pruners replayed on the no-pruning run's learning curves; their times are the "
           "recorded times of the epochs they ran" if args.replay else
           "every pruner trained for real")
    out = "\n".join([report(runs, spec, args.configs, device), how, load.summary()])
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
