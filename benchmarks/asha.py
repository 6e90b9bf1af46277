"""ASHA with promotion against median pruning: device time to a target validation accuracy.

Each pruner runs the same study (same space, sampler, trial budget, epochs) through tuner's
own worker (``api.run``, one worker in this process, SQLite in a temporary folder), once per
seed. Device time to target: the summed ``wall_time_s`` of the trial segments in the order
they finished, up to and including the first whose learning curve reaches ``--target``
(with one worker, device time is wall time). Run from the repository root:

    .venv/bin/python benchmarks/asha.py --data digits --seeds 3 --trials 27 --epochs 27
    .venv/bin/python benchmarks/asha.py --seeds 1 --trials 9 --epochs 9 --target 0.95 \
        --fix batch_size=128            # a short run on a loaded machine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import _common as c
from optuna.trial import TrialState

from tuner import api

SPECS = {"digits": "digits_mlp.yaml", "mnist": "mnist_mlp.yaml"}
PRUNERS: dict[str, dict[str, Any]] = {
    "median": {"name": "median", "n_startup_trials": 5, "min_epochs": 3},
    "asha": {"name": "asha", "min_epochs": 1, "reduction_factor": 3},
}


def one(data: str, pruner: str, seed: int, trials: int, epochs: int, target: float,
        folder: Path, fixed: dict[str, Any]) -> dict[str, Any]:
    spec = c.bench_spec(Path("search_spaces") / SPECS[data], name=f"{pruner}_{seed}",
                        seed=seed, epochs=epochs, trials=trials, pruner=PRUNERS[pruner])
    spec = c.fix_params(spec, fixed) if fixed else spec
    url = f"sqlite:///{folder / f'{pruner}_{seed}.db'}"
    result = api.run(spec, storage=url, device="cpu", checkpoint_dir=str(folder / "ckpt"),
                     data_dir=str(folder / "data"))
    ts = [t for t in result.handle.study.get_trials(deepcopy=False) if t.datetime_complete]
    ts.sort(key=lambda t: t.datetime_complete)
    spent, reached = 0.0, None
    for t in ts:
        spent += float(t.user_attrs.get("wall_time_s", 0.0))
        if reached is None and max(t.intermediate_values.values(), default=0.0) >= target:
            reached = spent
    best = max((v for t in ts for v in t.intermediate_values.values()), default=float("nan"))
    failed = sum(t.state == TrialState.FAIL for t in ts)
    return {"to_target": reached, "total": spent, "best": best, "segments": len(ts),
            "failed": failed}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(SPECS), default="digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=27)
    ap.add_argument("--epochs", type=int, default=27)
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--fix", nargs="*", default=[], metavar="NAME=VALUE",
                    help="make parameters constants, e.g. batch_size=128")
    args = ap.parse_args(argv)
    fixed = c.parse_assignments(args.fix)
    c.quiet_libraries()
    print(f"# {c.machine('cpu')}; load before: {c.load_average()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in PRUNERS:
            runs = [one(args.data, pruner, s, args.trials, args.epochs, args.target, Path(tmp),
                        fixed) for s in range(args.seeds)]
            hit = [r["to_target"] for r in runs if r["to_target"] is not None]
            rows.append([
                pruner, f"{len(hit)}/{len(runs)}",
                c.fmt_s(statistics.median(hit)) if hit else "-",
                f"{c.fmt_s(min(hit))}..{c.fmt_s(max(hit))}" if hit else "-",
                c.fmt_s(statistics.median(r["total"] for r in runs)),
                f"{statistics.median(r['best'] for r in runs):.4f}",
                statistics.median(r["segments"] for r in runs),
            ])
    print(c.table(["pruner", "reached", f"to {args.target} (median)", "spread",
                   "total device s", "best acc", "segments"], rows))
    print(f"# load after: {c.load_average()}")


if __name__ == "__main__":
    main()
