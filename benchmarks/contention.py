"""One trial's seconds on a quiet CPU, beside busy neighbours and in a 1-CPU cgroup quota:
tuner's thread defaults before and after, side by side.

Each run is the real command in a fresh process, ``tuner run FILE --trials K --workers K
--device cpu`` (SQLite in a temporary folder), with every parameter fixed to the study's
first configuration at ``--seed 0`` (read from an untimed warm-up run), pruning off. For
each workload, K and condition, the arms run interleaved, ``--repeats`` times each.

Conditions:
  quiet    nothing added
  busy1    one busy neighbour process (``yes > /dev/null``) for the whole run
  busy2    two of them
  cgroup1  the command in a cgroup limited to 1 CPU that this script creates (cgroup v2 or
           v1, as root); skipped, saying why, where it cannot
Arms:
  before   the defaults as they were: torch's threads = the CPUs in the affinity mask, split
           among K local workers by os.cpu_count(), libgomp's default spin (300000), i.e.
           OMP_NUM_THREADS and GOMP_SPINCOUNT set so; or ``--before-rev REV``: that commit's
           code, run from a ``git archive`` of it
  after    nothing set: tuner chooses (its first line says how many threads and why)
  NAME     ``--arm NAME:VAR=VALUE,VAR=VALUE`` adds an arm with that environment

Seconds: the trials' span (first start to last finish, from the study's database; K=1: the
trial's own duration), median and [min-max] over the repeats; "x quiet" is the arm's median
against its own quiet median. The load average is printed with each run. Run from the
repository root:

    .venv/bin/python benchmarks/contention.py                    # everything, 3 repeats
    .venv/bin/python benchmarks/contention.py --quick            # digits, 1 repeat, K=1
    .venv/bin/python benchmarks/contention.py --workloads mnist --workers 1 2 4 \
        --conditions quiet busy1
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import _common as c
import optuna
import yaml

# workload -> (study file, overrides for --quick)
WORKLOADS = {"mnist": ("search_spaces/mnist_mlp.yaml", {"epochs": 2}),
             "digits": ("search_spaces/digits_mlp.yaml", {"epochs": 10})}
CONDITIONS = ("quiet", "busy1", "busy2", "cgroup1")
# the variables that decide threads and OpenMP waits: cleared, then each arm sets its own
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
           "TUNER_THREADS", "MKL_NUM_THREADS", "SLURM_CPUS_PER_TASK")
LIBGOMP_DEFAULT_SPIN = 300000


def before_env(workers: int) -> dict[str, str]:
    """The environment that reproduces the old defaults (see the module's docstring)."""
    if workers == 1:
        threads = len(os.sched_getaffinity(0))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
    return {"OMP_NUM_THREADS": str(threads), "GOMP_SPINCOUNT": str(LIBGOMP_DEFAULT_SPIN)}


# ---- conditions ---------------------------------------------------------------------------
@contextmanager
def neighbours(n: int) -> Iterator[None]:
    procs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def make_cgroup(name: str) -> tuple[Path | None, str]:
    """A cgroup limited to 1 CPU (its cgroup.procs file to join), or None and why not."""
    root = Path("/sys/fs/cgroup")
    try:
        if (root / "cgroup.controllers").exists():  # v2
            if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            folder = root / name
            folder.mkdir(exist_ok=True)
            (folder / "cpu.max").write_text("100000 100000")
            return folder / "cgroup.procs", "cgroup v2 cpu.max 100000 100000"
        if (root / "cpu").is_dir():  # v1
            folder = root / "cpu" / name
            folder.mkdir(exist_ok=True)
            (folder / "cpu.cfs_period_us").write_text("100000")
            (folder / "cpu.cfs_quota_us").write_text("100000")
            return folder / "cgroup.procs", "cgroup v1 cpu.cfs_quota_us 100000 / 100000"
        return None, "no cgroup cpu controller mounted at /sys/fs/cgroup"
    except OSError as e:
        return None, f"cannot create a cgroup here ({e.strerror}: {e.filename})"


def drop_cgroup(procs: Path | None) -> None:
    if procs is not None:
        try:
            procs.parent.rmdir()
        except OSError:
            pass


# ---- one run --------------------------------------------------------------------------------
def run_once(file: Path, workers: int, env: dict[str, str], code: Path, folder: Path,
             join: Path | None = None) -> tuple[float, str]:
    """Seconds of the trials of one ``tuner run`` and its line naming the threads."""
    db = folder / f"s{time.monotonic_ns()}.db"
    full = {k: v for k, v in os.environ.items() if k not in CLEARED}
    full.update(env, PYTHONPATH=str(code), TUNER_DOWNLOAD="0")

    def enter() -> None:
        if join is not None:
            join.write_text(str(os.getpid()))

    # its own process group: a stopped benchmark stops the run's worker processes too
    popen = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", str(file), "--trials", str(workers),
         "--workers", str(workers), "--device", "cpu", "--storage", f"sqlite:///{db}",
         "--checkpoint-dir", str(folder / "ckpt")],
        env=full, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=enter, start_new_session=True)
    try:
        stdout, stderr = popen.communicate()
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    if proc.returncode != 0:
        raise SystemExit(f"tuner run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    # the first line names the threads ("... on cpu, 2 threads (why)"), wrapped at 80 columns
    found = re.search(r"(\d+ threads? \([^)]*\))", " ".join(proc.stdout.split()))
    said = found.group(1) if found else "-"
    ts = optuna.load_study(study_name=None, storage=f"sqlite:///{db}").trials
    span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts))
    db.unlink()
    return span.total_seconds(), said


def fixed_file(workload: str, quick: bool, folder: Path, code: Path,
               epochs: int | None = None) -> Path:
    """The workload's study file with every parameter fixed to its first configuration at
    seed 0 (an untimed run of the file itself, which also warms the caches)."""
    path, quick_overrides = WORKLOADS[workload]
    raw = yaml.safe_load((code / path).read_text())
    raw.update(seed=0, pruner={"name": "none"}, **(quick_overrides if quick else {}))
    if epochs is not None:
        raw["epochs"] = epochs
    first = folder / f"{workload}_first.yaml"
    first.write_text(yaml.safe_dump(raw, sort_keys=False))
    db = folder / f"{workload}_first.db"
    subprocess.run([sys.executable, "-m", "tuner", "run", str(first), "--trials", "1",
                    "--device", "cpu", "--storage", f"sqlite:///{db}", "-q",
                    "--checkpoint-dir", str(folder / "ckpt")],
                   env={**os.environ, "PYTHONPATH": str(code)}, cwd=code, check=True)
    params = optuna.load_study(study_name=None, storage=f"sqlite:///{db}").trials[0].params
    raw["space"] = {**raw["space"], **{k: {"value": v} for k, v in params.items()}}
    raw["name"] = f"{workload}_fixed"
    fixed = folder / f"{workload}_fixed.yaml"
    fixed.write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"# {workload}: first configuration {params}", flush=True)
    return fixed


def old_checkout(rev: str, folder: Path) -> Path:
    """Commit ``rev`` of this repository, unpacked into ``folder``/before."""
    out = folder / "before"
    out.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=c.REPO, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} [{min(xs):.1f}-{max(xs):.1f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="*", choices=sorted(WORKLOADS), default=["mnist", "digits"])
    ap.add_argument("--conditions", nargs="*", choices=CONDITIONS, default=list(CONDITIONS))
    ap.add_argument("--workers", nargs="*", type=int, default=[1],
                    help="local workers K (each runs K trials of the same configuration)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before-repeats", type=int, default=None,
                    help="repeats of the before arm (default --repeats): the old defaults "
                         "beside busy neighbours can take 40x their quiet time")
    ap.add_argument("--epochs", type=int, default=None, help="every workload's epochs")
    ap.add_argument("--arm", action="append", default=[],
                    help="NAME:VAR=VALUE,VAR=VALUE: one more arm with that environment")
    ap.add_argument("--no-before", action="store_true", help="leave the before arm out")
    ap.add_argument("--before-rev", default=None,
                    help="run the before arm from this commit's code instead of its env")
    ap.add_argument("--quick", action="store_true",
                    help="digits only (10 epochs), K=1, one repeat; MNIST, if asked, at 2 epochs")
    args = ap.parse_args(argv)
    # stopped (kill, Ctrl-C): the busy neighbours and the cgroup go too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        if "--workloads" not in " ".join(argv or sys.argv):
            args.workloads = ["digits"]
        args.repeats = 1
    here = c.REPO
    print(f"# {c.machine('cpu')}; affinity {len(os.sched_getaffinity(0))} CPUs", flush=True)
    c.quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, c.LoadMonitor() as load:
        folder = Path(tmp)
        before_code = old_checkout(args.before_rev, folder) if args.before_rev else here
        arms: list[tuple[str, Path, dict[str, str] | None]] = []
        if not args.no_before:
            arms.append(("before", before_code, None))
        arms.append(("after", here, {}))
        for spec in args.arm:
            name, _, assigns = spec.partition(":")
            arms.append((name, here, dict(a.split("=", 1) for a in assigns.split(",") if a)))
        join, how = (None, "")
        if "cgroup1" in args.conditions:
            join, how = make_cgroup(f"tuner-bench-{os.getpid()}")
            print(f"# cgroup1: {how}" + ("; skipped" if join is None else ""), flush=True)
        try:
            for workload in args.workloads:
                file = fixed_file(workload, args.quick, folder, here, args.epochs)
                for k in args.workers:
                    quiet: dict[str, float] = {}
                    for cond in args.conditions:
                        if cond == "cgroup1" and join is None:
                            continue
                        busy = {"busy1": 1, "busy2": 2}.get(cond, 0)
                        times: dict[str, list[float]] = {a[0]: [] for a in arms}
                        said: dict[str, str] = {}
                        with neighbours(busy):
                            for r in range(args.repeats):
                                for name, code, env in arms:
                                    if (name == "before" and args.before_repeats is not None
                                            and r >= args.before_repeats):
                                        continue
                                    if env is None:
                                        env = {} if args.before_rev else before_env(k)
                                    s, line = run_once(file, k, env, code, folder,
                                                       join if cond == "cgroup1" else None)
                                    times[name].append(s)
                                    said[name] = line
                                    print(f"# {workload} K={k} {cond} {name} #{r + 1}: {s:.2f} s; "
                                          f"load {c.load_average()}; {line}", flush=True)
                        for name, *_ in arms:
                            med = statistics.median(times[name])
                            if cond == "quiet":
                                quiet[name] = med
                            vs = f"{med / quiet[name]:.2f}x" if name in quiet else "-"
                            rows.append([workload, k, cond, name, spread(times[name]), vs,
                                         said[name]])
        finally:
            drop_cgroup(join)
            shutil.rmtree(folder / "ckpt", ignore_errors=True)
    print(c.table(["workload", "K", "condition", "arm", "seconds median [min-max]",
                   "x quiet", "threads line"], rows))
    print(f"# {load.summary()}; load after: {c.load_average()}")


if __name__ == "__main__":
    main()
