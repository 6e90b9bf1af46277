"""Pruning a multi-objective study (accuracy against parameter count): epochs saved and the
hypervolume of the Pareto front lost, for tuner's pruners against no pruning.

Each pruner runs the same configurations in the same order (Optuna's RandomSampler with one
seed), through tuner's own worker loop on a fresh SQLite study, so only the pruning
differs. Hypervolume: of the front in (accuracy, parameters), bounded by accuracy 0 and
1.1 x the largest parameter count seen. Run from the repository root:

    .venv/bin/python benchmarks/mo_pruning.py --data digits --trials 16 --epochs 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common as c
from optuna.trial import TrialState

from tuner import study as st
from tuner.config import parse_spec
from tuner.runtime.worker import Worker
from tuner.settings import Settings
from tuner.storage import Heartbeat, connect
from tuner.trials import TrialRunner

HB = Heartbeat(interval=5, grace_period=30)


def hypervolume(points: list[tuple[float, float]], ref_params: float) -> float:
    """2-D hypervolume of (accuracy to maximize, params to minimize) points."""
    front = sorted((p, a) for a, p in points if p < ref_params)
    area, best = 0.0, 0.0
    for i, (params, acc) in enumerate(front):
        best = max(best, acc)
        right = front[i + 1][0] if i + 1 < len(front) else ref_params
        area += best * (right - params)
    return area


def run(pruner: str, args: argparse.Namespace, folder: Path) -> dict:
    spec = parse_spec({
        "name": f"mo_{pruner}", "data": args.data, "model": "mlp", "epochs": args.epochs,
        "trials": args.trials, "seed": args.seed, "sampler": "random", "checkpoint": False,
        "objectives": ["accuracy", "params"],
        "pruner": {"name": pruner, "n_startup_trials": 4, "min_epochs": 1},
        "space": {"width": {"type": "int", "low": 8, "high": 512, "log": True},
                  "depth": {"type": "int", "low": 1, "high": 3},
                  "lr": {"type": "float", "low": 1e-4, "high": 3e-1, "log": True}},
    })
    handle = st.create_or_resume(connect(f"sqlite:///{folder / (pruner + '.db')}", HB), spec)
    settings = Settings(device=args.device, checkpoint_dir=str(folder / "ckpt"))
    start = time.perf_counter()
    Worker(handle, TrialRunner.of(spec, settings), heartbeat=HB).run()
    trials = handle.study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return {"pruner": pruner, "wall_s": time.perf_counter() - start,
            "epochs": sum(len(t.intermediate_values) for t in trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "points": [(t.values[0], t.values[1]) for t in done],
            "all_params": [t.user_attrs.get("param_count", 0) for t in trials]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pruners", default="none,median,hyperband")
    args = ap.parse_args()
    c.quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp, c.LoadMonitor() as load:
        runs = [run(p, args, Path(tmp)) for p in args.pruners.split(",")]
    ref = 1.1 * max(p for r in runs for p in r["all_params"])
    base = runs[0]
    hv0 = hypervolume(base["points"], ref)
    rows = []
    for r in runs:
        hv = hypervolume(r["points"], ref)
        rows.append([r["pruner"], r["epochs"], f"{1 - r['epochs'] / base['epochs']:.0%}",
                     r["pruned"], f"{hv / ref:.4f}", f"{(hv0 - hv) / hv0:.2%}" if hv0 else "—",
                     c.fmt_s(r["wall_s"])])
    print(f"{args.data}, {args.trials} trials x {args.epochs} epochs, seed {args.seed}; "
          f"{c.machine(args.device)}; load {load.summary()}")
    print(c.table(["pruner", "epochs", "saved", "pruned", "HV (norm.)", "HV lost", "wall"], rows))


if __name__ == "__main__":
    main()
