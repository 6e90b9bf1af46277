"""GPU packing: trials per hour with 1, 2, 4, 8 worker processes sharing one GPU.

For each K in ``--workers`` it runs the real command, in a temporary folder,

    tuner run STUDY.yaml --workers K --workers-per-gpu K --device cuda --trials N ...

(K = 1 trains in the ``tuner run`` process itself; K > 1 starts K ``tuner worker`` processes,
all on the one GPU given by ``--gpu``), while a thread samples the GPU's utilisation and
memory (``nvidia-smi``, or ``torch.cuda.utilization()``) every ``--interval`` s.

The study is a small MNIST MLP study (``search_spaces/mnist_mlp.yaml``, no pruning) with the
knobs that set a trial's cost fixed (``--fixed``), so every trial does the same work and
trials per hour compare across K. Reported per K: wall time of the command (process start,
data loading, every trial), trials per hour over that wall time and over the steady part (first
trial started to last trial finished, from the study's timestamps), the speed-up over K = 1,
mean and peak GPU utilisation and peak GPU memory. Run from the repository root:

    TUNER_DATA_DIR=../shared/data .venv/bin/python benchmarks/packing.py --device cuda

``--device cpu`` runs the same commands on the CPU: a smoke test of the script, not a
measurement (the workers share the CPU's cores, so packing cannot help there).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import optuna
import torch
import yaml
from optuna.trial import TrialState

from tuner.config import StudySpec
from tuner.storage import connect

CPU_NOTE = ("NOTE: --device cpu is a smoke test of this script: K workers share the CPU's "
            "cores, so these figures say nothing about packing a GPU.")


def _number(text: str) -> float | None:
    """An nvidia-smi field as a number; None for "[N/A]", "[Not Supported]" and the like."""
    try:
        return float(text.strip())
    except ValueError:
        return None


def gpu_name(index: int, inherited: str | None) -> str:
    """GPU ``index`` of this process as the machine names it: through an inherited
    CUDA_VISIBLE_DEVICES (indices, UUIDs or MIG names), kept as written."""
    names = [n.strip() for n in (inherited or "").split(",") if n.strip()]
    return names[index] if index < len(names) else str(index)


class GpuMonitor(threading.Thread):
    """Samples one GPU's utilisation (%) and memory in use (MiB) until stopped."""

    def __init__(self, index: int, interval: float):
        super().__init__(name="gpu-monitor", daemon=True)
        self.index, self.interval = index, interval
        self.name = gpu_name(index, os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.util: list[float] = []
        self.mem: list[float] = []
        self.halt = threading.Event()
        self.smi = shutil.which("nvidia-smi")

    def sample(self) -> tuple[float, float | None] | None:
        if self.smi:
            out = subprocess.run(
                [self.smi, "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-i", self.name],
                capture_output=True, text=True, timeout=10,
            )
            if out.returncode == 0 and out.stdout.strip():
                util, mem = out.stdout.strip().splitlines()[0].split(",")[:2]
                if (u := _number(util)) is not None:  # MIG reports "[N/A]"
                    return u, _number(mem)
        try:  # needs the nvidia-ml-py package
            return float(torch.cuda.utilization(self.index)), None
        except Exception:  # noqa: BLE001 - no way to read it: report nothing
            return None

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            s = self.sample()
            if s is None:
                return
            self.util.append(s[0])
            if s[1] is not None:
                self.mem.append(s[1])

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=15)


@dataclass
class PackRun:
    workers: int
    wall_s: float
    cpu_s: float  # the `tuner run` process and its workers
    finished: int
    complete: int
    steady_s: float | None  # first trial started to last trial finished
    best: float | None
    util: list[float] = field(default_factory=list)
    mem: list[float] = field(default_factory=list)

    def per_hour(self, seconds: float | None) -> float | None:
        return self.finished * 3600 / seconds if seconds else None


def study_file(base: str, epochs: int, trials: int, fixed: dict[str, Any], folder: Path) -> Path:
    """The benchmark's study file: ``base`` with no pruning and ``fixed`` params."""
    spec = c.fix_params(c.bench_spec(base, epochs=epochs, trials=trials,
                                     pruner={"name": "none"}), fixed)
    # base_dir kept: user code named by relative paths still resolves against the original
    raw = spec.model_dump(mode="json")
    path = folder / "packing.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_packed(spec_path: Path, k: int, trials: int, args: argparse.Namespace,
               folder: Path) -> PackRun:
    name = f"packing-{k}"
    db = folder / f"{name}.db"
    cmd = [sys.executable, "-m", "tuner", "run", str(spec_path), "--study", name,
           "--storage", f"sqlite:///{db}", "--trials", str(trials), "--workers", str(k),
           "--workers-per-gpu", str(k), "--device", args.device, "--data-dir", args.data_dir,
           "--checkpoint-dir", str(folder / "checkpoints"), "--no-download", "--quiet"]
    env = dict(os.environ)
    if args.device == "cuda":
        # one GPU, named as nvidia-smi names it
        env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID",
                   CUDA_VISIBLE_DEVICES=gpu_name(args.gpu, os.environ.get("CUDA_VISIBLE_DEVICES")))
    monitor = GpuMonitor(args.gpu, args.interval) if args.device == "cuda" else None
    if monitor is not None:
        monitor.start()
    start, cpu = time.perf_counter(), c.cpu_seconds()
    try:
        proc = subprocess.run(cmd, env=env, cwd=c.REPO, capture_output=True, text=True)
    finally:
        wall, cpu = time.perf_counter() - start, c.cpu_seconds() - cpu
        if monitor is not None:
            monitor.stop()
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    study = optuna.load_study(study_name=name, storage=connect(f"sqlite:///{db}"))
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    starts = [t.datetime_start for t in done if t.datetime_start is not None]
    ends = [t.datetime_complete for t in done if t.datetime_complete is not None]
    steady = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    best = max((t.value for t in complete if t.value is not None), default=None)
    return PackRun(k, wall, cpu, len(done), len(complete), steady, best,
                   monitor.util if monitor else [], monitor.mem if monitor else [])


def report(runs: list[PackRun], spec: StudySpec, device: str, args: argparse.Namespace) -> str:
    base = runs[0] if runs and runs[0].workers == 1 else None
    headers = ["workers", "trials", "wall s", "CPU s", "trials/h", "steady trials/h", "x 1 worker",
               "GPU util mean %", "GPU util max %", "GPU mem max MiB", "best val acc"]
    rows = []
    for r in runs:
        speed = (f"{r.per_hour(r.wall_s) / base.per_hour(base.wall_s):.2f}x"
                 if base and r.finished and base.finished else "-")
        rows.append([
            r.workers, r.finished, f"{r.wall_s:.1f}", f"{r.cpu_s:.0f}",
            f"{r.per_hour(r.wall_s):.0f}",
            f"{r.per_hour(r.steady_s):.0f}" if r.steady_s else "-", speed,
            f"{statistics.fmean(r.util):.0f}" if r.util else "-",
            f"{max(r.util):.0f}" if r.util else "-",
            f"{max(r.mem):.0f}" if r.mem else "-",
            "-" if r.best is None else f"{r.best:.4f}",
        ])
    fixed = ", ".join(f"{k}={v}" for k, v in args.fixed_params.items())
    dev = torch.device("cuda", args.gpu) if device == "cuda" else torch.device("cpu")
    head = (f"{spec.data} {spec.model}, {args.trials} trials x {args.epochs} epochs per K, no "
            f"pruning, fixed {fixed or 'nothing'}; `tuner run --workers K --workers-per-gpu K "
            f"--device {device}`\n{c.machine(dev)}")
    lines = [head, "", c.table(headers, rows)]
    if device == "cpu":
        lines += ["", CPU_NOTE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(c.REPO / "search_spaces" / "mnist_mlp.yaml"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="worker processes on the one GPU (one run each)")
    parser.add_argument("--trials", type=int, default=32,
                        help="trials per run (a multiple of every K keeps the workers busy)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fixed", nargs="*", default=["batch_size=256", "depth=2", "width=512"],
                        help="KEY=VALUE params held constant so every trial costs the same")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--gpu", type=int, default=0,
                        help="which GPU (nvidia-smi's index); workers of K > 1 get "
                             "CUDA_VISIBLE_DEVICES from tuner, which must map it through ours")
    parser.add_argument("--interval", type=float, default=0.5, help="GPU sampling period (s)")
    parser.add_argument("--data-dir", default=c.DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    c.quiet_libraries()
    args.device = c.resolve_device(args.device).type
    args.data_dir = str(Path(args.data_dir).resolve())  # the runs start in the repository
    args.fixed_params = c.parse_assignments(args.fixed)
    if args.device == "cpu":
        print(CPU_NOTE, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tuner-packing-") as tmp, c.LoadMonitor() as load:
        folder = Path(tmp)
        path = study_file(args.spec, args.epochs, args.trials, args.fixed_params, folder)
        spec = c.bench_spec(path)
        runs = []
        for k in sorted(args.workers):
            runs.append(run_packed(path, k, args.trials, args, folder))
            print(f"  {k} workers: {runs[-1].finished} trials in {runs[-1].wall_s:.1f} s",
                  file=sys.stderr)
    out = report(runs, spec, args.device, args) + "\n" + load.summary()
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
