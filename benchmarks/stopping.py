"""Studies that know when to stop: trials saved against best value lost, over several seeds.

Each seed runs the study file's full budget once through tuner (``api.run``, one worker, no
``stop:``). Each rule is then replayed on that study's trials in the order they finished:
the rule sees exactly the trials it would have seen live (one worker's sampler proposes the
same sequence whether or not a rule is watching), so "run" is where it would have stopped
the study, "saved" the trials it would not have trained, and "lost" the best value it would
have missed. The rules are tuner's own (``tuner.runtime.stopping``): patience on the reported metric,
and Optuna's Terminator (the median error evaluator without k-fold, as in tuner). Run from
the repository root:

    .venv/bin/python benchmarks/stopping.py --seeds 0 1 2 --trials 40 --epochs 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import _common as c
import optuna
from optuna.trial import TrialState

from tuner import api
from tuner.config import StopSpec, StudySpec
from tuner.runtime import stopping


def _best(spec: StudySpec, values: list[float]) -> float | None:
    if not values:
        return None
    return max(values) if spec.direction_name == "maximize" else min(values)


def replay(spec: StudySpec, trials: list[optuna.trial.FrozenTrial], rule: str) -> int:
    """How many finished trials the study would have run under ``rule``."""
    done = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                  key=lambda t: t.datetime_complete)
    if rule.startswith("patience"):
        s = spec.model_copy(update={"stop": StopSpec(patience=int(rule.split("=")[1]))})
        for k in range(1, len(done) + 1):
            if stopping.patience_reason(s, done[:k]) is not None:
                return k
        return len(done)
    s = spec.model_copy(update={"stop": StopSpec(terminator=True)})
    study = optuna.create_study(directions=spec.directions)
    for k, t in enumerate(done, 1):
        study.add_trial(t)
        if stopping.terminator_reason(s, study) is not None:
            return k
    return len(done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="search_spaces/digits_mlp.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rules", nargs="+", default=["patience=5", "patience=10", "patience=15",
                                                    "terminator"])
    ap.add_argument("--data-dir", default=c.DEFAULT_DATA_DIR)
    args = ap.parse_args()
    c.quiet_libraries()
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows, summary = [], {r: ([], []) for r in args.rules}
    started = time.perf_counter()
    for seed in args.seeds:
        spec = c.bench_spec(args.spec, epochs=args.epochs, trials=args.trials, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            result = api.run(spec, storage=f"sqlite:///{Path(tmp) / 's.db'}", device="cpu",
                             checkpoint_dir=tmp, data_dir=args.data_dir)
            trials = result.study.get_trials(deepcopy=False)
            spec = result.spec
            done = sorted((t for t in trials if t.state in (TrialState.COMPLETE,
                                                             TrialState.PRUNED)),
                          key=lambda t: t.datetime_complete)
            full = _best(spec, [t.value for t in done if t.state == TrialState.COMPLETE])
            for rule in args.rules:
                k = replay(spec, trials, rule)
                at = _best(spec, [t.value for t in done[:k] if t.state == TrialState.COMPLETE])
                lost = abs(full - at) if full is not None and at is not None else None
                rows.append([rule, seed, k, len(done) - k, f"{full:.4f}", f"{at:.4f}",
                             f"{lost:.4f}"])
                summary[rule][0].append(len(done) - k)
                summary[rule][1].append(lost or 0.0)
    print(c.machine("cpu"))
    print(f"{args.spec}, {args.trials} trials x {args.epochs} epochs, seeds {args.seeds}; "
          f"{time.perf_counter() - started:.0f} s")
    print(c.table(["rule", "seed", "run", "saved", f"best ({spec.metric_name})",
                   "best at stop", "lost"], rows))
    print()
    print(c.table(["rule", "mean trials saved", "mean best lost", "worst lost"],
                  [[r, f"{statistics.mean(s):.1f}", f"{statistics.mean(lo):.4f}",
                    f"{max(lo):.4f}"] for r, (s, lo) in summary.items()]))


if __name__ == "__main__":
    main()
