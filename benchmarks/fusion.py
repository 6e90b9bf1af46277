"""Same-shape trials trained as one (``fuse: K``): trials per hour at K = 1, 4, 8.

Each workload is a real study run through tuner's own worker (``api.run``, one worker in
this process, SQLite in a temporary folder, pruning off so every trial trains its epochs),
with the architecture fixed and lr, weight decay and dropout searched. K = 1 is tuner's
ordinary loop (``fuse: off``); K > 1 trains K trials as one stacked model. Trials per hour:
the study's trials over their span (first trial's start to last trial's end: the database's
per-trial work is in, the study's one-off data loading is out), per seed; medians and spread
over the seeds; "wall s" is the whole ``api.run``. Run from the repository root:

    .venv/bin/python benchmarks/fusion.py --seeds 3
    .venv/bin/python benchmarks/fusion.py --workloads digits --k 1 8 --seeds 1   # quick
    .venv/bin/python benchmarks/fusion.py --device cuda --workloads mnist --k 1 4 8 16 \
        --seeds 1 --trials 16                                                   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c
import optuna

from tuner import api

SEARCHED = {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
            "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3}}
# name -> (study file, overrides, fixed params): small models, where one trial leaves a CPU idle
WORKLOADS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "digits": ("digits_mlp.yaml", {"epochs": 5, "trials": 16},
               {"depth": 2, "width": 64, "batch_size": 32, "activation": "relu",
                "optimizer": "adamw"}),
    "diabetes": ("diabetes_mlp.yaml", {"epochs": 20, "trials": 16, "validation": 0.2},
                 {"depth": 2, "width": 32, "batch_size": 16, "activation": "relu",
                  "optimizer": "adamw"}),
    "mnist": ("mnist_mlp.yaml", {"epochs": 1, "trials": 8},
              {"depth": 2, "width": 256, "batch_size": 256, "activation": "relu",
               "optimizer": "adam", "schedule": "cosine"}),
}


def one(workload: str, k: int, seed: int, folder: Path, data_dir: str,
        trials: int | None, device: str = "cpu", epochs: int | None = None,
        cli: bool = False, threads: int | None = None) -> dict[str, float]:
    path, overrides, fixed = WORKLOADS[workload]
    raw = c.load_spec(Path("search_spaces") / path).model_dump(mode="json")
    raw.update(overrides, name=f"{workload}_k{k}_s{seed}", seed=seed, pruner={"name": "none"},
               fuse=k if k > 1 else "off", space={**SEARCHED, **fixed})
    if trials is not None:
        raw["trials"] = trials
    if epochs is not None:
        raw["epochs"] = epochs
    spec = c.parse_spec(raw, source=path)
    url = f"sqlite:///{folder / f'{spec.name}.db'}"
    start = time.perf_counter()
    if cli:  # the real command in a fresh process, with the environment a user has
        file = folder / f"{spec.name}.yaml"
        file.write_text(json.dumps(raw))
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                            "KMP_BLOCKTIME", "TUNER_THREADS")}
        subprocess.run([sys.executable, "-m", "tuner", "run", str(file), "--storage", url,
                        "--device", device, "--checkpoint-dir", str(folder / "ckpt"),
                        "--data-dir", data_dir, "-q",
                        *(["--threads", str(threads)] if threads else [])], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        study = optuna.load_study(study_name=spec.name, storage=url)
    else:
        study = api.run(spec, storage=url, device=device, checkpoint_dir=str(folder / "ckpt"),
                        data_dir=data_dir, download=False).study
    wall = time.perf_counter() - start
    ts = study.trials
    done = sum(t.state.is_finished() for t in ts)
    # the trials' span, first start to last finish: the study's one-off set-up (data
    # loading, the preflight check) is left out, the database's per-trial work is in
    span = (max(t.datetime_complete for t in ts if t.datetime_complete)
            - min(t.datetime_start for t in ts if t.datetime_start)).total_seconds()
    values = [t.value for t in ts if t.value is not None]
    best = (max(values) if spec.direction_name == "maximize" else min(values)) if values else None
    return {"per_hour": done * 3600 / span, "wall": wall, "trials": done,
            "best": best if best is not None else float("nan")}


def loop_only(workload: str, k: int, data_dir: str, device: str) -> tuple[float, float]:
    """The training loops alone, no study, no database: seconds for K plain ``fit`` calls
    one after another, and for one ``fit_fused`` of the same K members."""
    import torch

    from tuner.data import load_builtin
    from tuner.training import fuse, train
    from tuner.training.context import Context

    path, overrides, fixed = WORKLOADS[workload]
    spec = c.load_spec(Path("search_spaces") / path)
    validation = overrides.get("validation", spec.validation)
    data = load_builtin(spec.data, data_dir, validation=validation, seed=0,
                        download=False).to(device)
    epochs = overrides.get("epochs", spec.epochs)
    members = [{**fixed, "lr": 3e-3 * (1 + i / k), "weight_decay": 1e-5, "dropout": 0.1}
               for i in range(k)]

    def ctx(i: int) -> Context:
        return Context(device=torch.device(device), seed=i, max_epochs=epochs, data=data,
                       task=data.task, metric=spec.metric_name)

    start = time.perf_counter()
    for i, p in enumerate(members):
        train.fit(p, ctx(i))
    alone = time.perf_counter() - start
    start = time.perf_counter()
    fuse.fit_fused(members, [ctx(i) for i in range(k)])
    return alone, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="*", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    ap.add_argument("--k", nargs="*", type=int, default=[1, 4, 8])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=None, help="override every workload's trials")
    ap.add_argument("--data-dir", default=c.DEFAULT_DATA_DIR)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--no-loop-only", action="store_true",
                    help="skip the table of the training loops alone (no database)")
    ap.add_argument("--epochs", type=int, default=None, help="override every workload's epochs")
    ap.add_argument("--cli", action="store_true",
                    help="each study as `tuner run FILE` in a fresh process with the user's "
                         "defaults (no OMP_* or TUNER_THREADS): threads as tuner chooses them")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (torch.set_num_threads; with --cli, tuner run "
                         "--threads) for every K alike")
    args = ap.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    c.quiet_libraries()
    device = str(c.resolve_device(args.device))
    print(f"# {c.machine(device)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, c.LoadMonitor() as load:
        for workload in args.workloads if args.seeds > 0 else ():  # --seeds 0: loops only
            # untimed: the first study of a process pays for imports and the data's loading
            one(workload, max(args.k), 99, Path(tmp), args.data_dir, max(args.k), device)
            base = None
            for k in args.k:
                runs = [one(workload, k, s, Path(tmp), args.data_dir, args.trials, device,
                            args.epochs, args.cli, args.threads)
                        for s in range(args.seeds)]
                rates = [r["per_hour"] for r in runs]
                med = statistics.median(rates)
                base = med if base is None else base
                rows.append([workload, k, int(runs[0]["trials"]), f"{med:,.0f}",
                             f"{min(rates):,.0f}..{max(rates):,.0f}", f"{med / base:.2f}x",
                             f"{statistics.median(r['wall'] for r in runs):.1f}",
                             f"{statistics.median(r['best'] for r in runs):.4g}"])
                print(f"# {workload} K={k}: {med:,.0f} trials/h", flush=True)
        loops = []
        if not args.no_loop_only:
            for workload in args.workloads:
                loop_only(workload, 2, args.data_dir, device)  # warm-up
                for k in [k for k in args.k if k > 1]:
                    alone, fused = loop_only(workload, k, args.data_dir, device)
                    loops.append([workload, k, f"{alone:.2f}", f"{fused:.2f}",
                                  f"{alone / fused:.2f}x"])
    if rows:
        print(f"whole study ({'tuner run' if args.cli else 'api.run'}, SQLite):")
        print(c.table(["workload", "K", "trials", "trials/h (median)", "spread",
                       f"vs K={args.k[0]}", "wall s", "best value"], rows))
    if loops:
        print("training loops alone (K fits one after another against one fit_fused, seed 0):")
        print(c.table(["workload", "K", "K x fit s", "fit_fused s", "speed-up"], loops))
    print(f"# {load.summary()}; load after: {c.load_average()}")


if __name__ == "__main__":
    main()
