"""Pruning: epochs saved against accuracy lost, for tuner's pruners against no pruning.

``--configs`` configurations are drawn once from the study file's space with Optuna's
RandomSampler (``--seeds``); each pruner then trains that same list, in the same order, through
tuner's own trial path (``objective.Objective.run``: the same data, kept on the device and
loaded once, the same model, the same initial weights per trial number). A configuration that
survives a pruner therefore ends with the same accuracy it has without pruning (the "same"
column checks it), and the best accuracy can only drop when a pruner stops the configuration
that would have won.

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
import time
from dataclasses import dataclass
from typing import Any

import _common as c
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner import space
from tuner.objective import Objective, Runtime
from tuner.spec import StudySpec
from tuner.study import build_pruner

PRUNERS = ("none", "median", "successive_halving", "hyperband")
SPECS = {"mnist": "mnist_mlp.yaml", "digits": "digits_mlp.yaml",
         "fashion_mnist": "fashion_mnist_mlp.yaml"}


@dataclass
class PrunerRun:
    pruner: str
    seed: int
    wall_s: float
    trials: list[FrozenTrial]

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


def run_pruner(spec: StudySpec, name: str, configs: list[dict[str, Any]], seed: int,
               runtime: Runtime) -> PrunerRun:
    """Train ``configs`` in order under pruner ``name`` with tuner's trial path."""
    spec = spec.model_copy(update={"pruner": spec.pruner.model_copy(update={"name": name})})
    # the same study name for every pruner: Hyperband puts a trial in a bracket by hashing
    # the study name with the trial number, so each pruner sees the same brackets across runs
    study = optuna.create_study(study_name="pruning-bench", direction=spec.direction_name,
                                sampler=optuna.samplers.RandomSampler(seed=seed),
                                pruner=build_pruner(spec))
    for params in configs:
        study.enqueue_trial(params)
    objective = Objective(spec, runtime)
    start = time.perf_counter()
    for _ in configs:
        trial = study.ask()
        outcome = objective.run(trial)
        if outcome.state == TrialState.COMPLETE:
            study.tell(trial, outcome.value)
        else:
            study.tell(trial, state=outcome.state)
            if outcome.state == TrialState.FAIL:
                print(f"  {name}: trial {trial.number} failed: {outcome.fail_reason}",
                      file=sys.stderr)
    return PrunerRun(name, seed, time.perf_counter() - start, study.get_trials(deepcopy=False))


def report(runs: list[PrunerRun], spec: StudySpec, n: int, device: torch.device) -> str:
    maximize = spec.direction_name == "maximize"
    metric = spec.metric_name
    base = {r.seed: r for r in runs if r.pruner == "none"}
    headers = ["pruner", "epochs", "saved", "complete", "pruned", f"best {metric}",
               f"{metric} lost", "kept the best", "same", "wall s", "saved time"]
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
        wall = sum(r.wall_s for r in mine)
        base_wall = sum(base[r.seed].wall_s for r in mine if r.seed in base)
        rows.append([
            name, epochs, f"{1 - epochs / full:.0%}" if full else "-",
            sum(sum(t.state == TrialState.COMPLETE for t in r.trials) for r in mine),
            sum(sum(t.state == TrialState.PRUNED for t in r.trials) for r in mine),
            _mean(bests), _mean(lost, signed=True) if lost else "-",
            f"{kept}/{len(mine)}" if lost else "-", "yes" if same else "NO",
            f"{wall:.1f}", f"{1 - wall / base_wall:.0%}" if base_wall else "-",
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
            "configurations ended with the accuracy they had without pruning")
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
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-dir", default=c.DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
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
    # one worker's runtime: the data is loaded once and reused by every pruner and seed
    runtime = Runtime(device=str(device), data_dir=args.data_dir, download=False)
    runs = []
    for seed in args.seeds:
        configs = sample_configs(spec, args.configs, seed)
        for name in pruners:
            runs.append(run_pruner(spec, name, configs, seed, runtime))
    out = report(runs, spec, args.configs, device)
    print(out)
    return out


if __name__ == "__main__":
    c.quiet_libraries()
    main(sys.argv[1:])
