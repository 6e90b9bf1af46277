"""Device time to a target validation accuracy: median pruning, successive halving,
hyperband, ASHA with promotion, asynchronous Hyperband with promotion, PBT and PB2, side by
side, same space, same trial budget.

Each schedule runs the same study (``--data``'s MLP space, RandomSampler with the run's
seed, so trial i draws the same configuration under every schedule; same trial budget and
epochs; PBT's and PB2's population is the trial budget) through tuner's own worker, one
worker in this process, SQLite in a temporary folder. The clock starts when the first trial
starts (data loading is not counted) and stops at the first epoch report, of any trial,
that reaches each ``--target``: with one worker, device time is wall time. "epochs to" counts
the epochs trained, all trials together, until then: the same on a busy machine as on a quiet
one (a CPU run is deterministic for a seed), where seconds are not. A run stops once it
reached them all (the rest of its budget is not needed to answer the question), or at
``--cap`` seconds, or when its budget is spent ("not reached"); "s run" is where it stopped.
Run from the repository root:

    .venv/bin/python benchmarks/schedules.py --data mnist --seeds 3 --trials 6 --epochs 5 \
        --target 0.97 0.975 0.98 --cap 100
    .venv/bin/python benchmarks/schedules.py --data digits --seeds 1 --trials 4 --epochs 4 \
        --target 0.9             # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common as c

from tuner import api
from tuner.objective import TrialRunner
from tuner.spec import load_spec
from tuner.worker import Event, Worker

# one small MLP space each, that can reach the default target in a few epochs
SPACES: dict[str, dict[str, Any]] = {
    "mnist": {
        "lr": {"type": "float", "low": 3.0e-4, "high": 1.0e-2, "log": True},
        "batch_size": 512,
        "depth": {"type": "int", "low": 1, "high": 2},
        "width": {"type": "int", "low": 64, "high": 512, "log": True},
        "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "optimizer": "adam",
    },
    "digits": {
        "lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
        "batch_size": 64,
        "width": {"type": "int", "low": 16, "high": 128, "log": True},
        "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "optimizer": "adam",
    },
}


def schedules(trials: int, epochs: int) -> dict[str, dict[str, Any]]:
    """Study-file keys per schedule (the same for every seed)."""
    return {
        "median": {"pruner": {"name": "median", "n_startup_trials": 2,
                              "min_epochs": max(1, epochs // 3)}},
        "successive_halving": {"pruner": {"name": "successive_halving", "min_epochs": 1,
                                          "reduction_factor": 3}},
        "hyperband": {"pruner": {"name": "hyperband", "min_epochs": 1, "reduction_factor": 3}},
        "asha": {"pruner": {"name": "asha", "min_epochs": 1, "reduction_factor": 3}},
        "async_hyperband": {"pruner": {"name": "async_hyperband", "min_epochs": 1,
                                       "reduction_factor": 3}},
        "pbt": {"pruner": {"name": "none"},
                "scheduler": {"name": "pbt", "population": trials,
                              "interval": max(1, epochs // 3), "quantile": 0.25}},
        "pb2": {"pruner": {"name": "none"},
                "scheduler": {"name": "pb2", "population": trials,
                              "interval": max(1, epochs // 3), "quantile": 0.25}},
    }


def study_raw(args: argparse.Namespace) -> dict[str, Any]:
    """The study every schedule runs, as a study file's keys (no pruner, no scheduler yet):
    ``--study``'s file (its space, model, data, epochs, trial budget), or the built-in
    ``--data`` MLP space; ``--sampler`` replaces the sampler."""
    if args.study:
        raw = load_spec(args.study).model_dump(mode="json", exclude_none=True)
        for key in ("pruner", "scheduler", "stop", "fuse", "timeout"):
            raw.pop(key, None)
        raw["epochs"] = args.epochs or raw["epochs"]
        raw["trials"] = args.trials or raw["trials"]
    else:
        raw = {"data": args.data, "model": "mlp", "metric": "accuracy",
               "epochs": args.epochs or 6, "trials": args.trials or 6,
               "validation": 0.1 if args.data == "mnist" else 0.2, "space": SPACES[args.data]}
        raw.setdefault("sampler", "random")
    if args.sampler:
        raw["sampler"] = args.sampler
    return raw


def one(raw: dict[str, Any], name: str, keys: dict[str, Any], seed: int,
        targets: list[float], cap: float, folder: Path, data_dir: str) -> dict[str, Any]:
    spec = api.as_spec({**raw, "name": f"{name}_{seed}", "seed": seed, **keys})
    settings = api.settings(storage=f"sqlite:///{folder / f'{name}_{seed}.db'}", device="cpu",
                            checkpoint_dir=str(folder / "ckpt"), data_dir=data_dir)
    prepared = api.prepare(spec, settings)
    stop = threading.Event()
    t0: list[float] = []
    hit: dict[float, float] = {}
    hit_epochs: dict[float, int] = {}  # epochs trained, all trials together, until then
    epochs_run = [0]
    best = [0.0]

    def on_event(e: Event) -> None:
        now = time.perf_counter()
        if e.kind == "started" and not t0:
            t0.append(now)
        if e.kind != "epoch" or e.value is None:
            return
        epochs_run[0] += 1
        best[0] = max(best[0], e.value)
        for target in targets:
            if e.value >= target and target not in hit:
                hit[target] = now - t0[0]
                hit_epochs[target] = epochs_run[0]
        if len(hit) == len(targets):
            stop.set()  # the epoch is checkpointed; the rest of the budget is not needed
        if t0 and now - t0[0] > cap:
            stop.set()

    assert prepared.assets is not None
    runner = TrialRunner(prepared.assets, checkpoint_dir=settings.checkpoint_dir, stop=stop)
    Worker(prepared.handle, runner, heartbeat=settings.heartbeat, on_event=on_event).run()
    total = time.perf_counter() - t0[0] if t0 else 0.0
    return {"to": hit, "epochs_to": hit_epochs, "total": total, "best": best[0],
            "epochs": epochs_run[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(SPACES), default="mnist")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--study", default=None,
                    help="a study file: its space, epochs and trial budget (else --data's)")
    ap.add_argument("--sampler", default=None,
                    help="replace the study's sampler (random: trial i draws the same "
                         "configuration under every schedule)")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--target", type=float, nargs="+", default=[0.98],
                    help="validation accuracies; a run stops once it reached them all")
    ap.add_argument("--cap", type=float, default=300.0, help="seconds per run at most")
    ap.add_argument("--only", nargs="*", default=None, help="these schedules only")
    ap.add_argument("--data-dir", default=os.environ.get("TUNER_DATA_DIR", "data"))
    args = ap.parse_args(argv)
    c.quiet_libraries()
    print(f"# {c.machine('cpu')}; load before: {c.load_average()}")
    raw = study_raw(args)
    print(f"# study: {args.study or args.data}, {raw['trials']} trials of at most "
          f"{raw['epochs']} epochs, sampler {raw.get('sampler')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, keys in schedules(raw["trials"], raw["epochs"]).items():
            if args.only and name not in args.only:
                continue
            runs = []
            for s in range(args.seeds):
                runs.append(one(raw, name, keys, s, args.target, args.cap, Path(tmp),
                                args.data_dir))
                r = runs[-1]
                print(f"#   {name} seed {s}: " + ", ".join(
                    f"{t}: {c.fmt_s(r['to'].get(t))}" for t in args.target)
                    + f"; {r['epochs']} epochs in {c.fmt_s(r['total'])}, best {r['best']:.4f}",
                    flush=True)
            row: list[Any] = [name]
            for target in args.target:
                hit = [r["to"][target] for r in runs if target in r["to"]]
                ep = [r["epochs_to"][target] for r in runs if target in r["epochs_to"]]
                row += [f"{len(hit)}/{len(runs)}",
                        c.fmt_s(statistics.median(hit)) if hit else "-",
                        f"{c.fmt_s(min(hit))}..{c.fmt_s(max(hit))}" if hit else "-",
                        f"{statistics.median(ep):g} ({min(ep)}..{max(ep)})" if ep else "-"]
            rows.append([*row, statistics.median(r["epochs"] for r in runs),
                         c.fmt_s(statistics.median(r["total"] for r in runs)),
                         f"{statistics.median(r['best'] for r in runs):.4f}"])
            print(f"# {name} done; load: {c.load_average()}", flush=True)
    heads = [h for t in args.target
             for h in (f"reached {t}", f"s to {t} (median)", "spread", f"epochs to {t}")]
    print(c.table(["schedule", *heads, "epochs run", "s run", "best acc"], rows))
    print(f"# load after: {c.load_average()}")


if __name__ == "__main__":
    main()
