"""How many CPU threads a worker trains with, and how its OpenMP threads wait.

``os.cpu_count()`` is the host's cores, not the worker's: a container's CPU quota, an
affinity mask (``taskset``, a Slurm step), Slurm's ``SLURM_CPUS_PER_TASK`` and the other local
workers of ``tuner run --workers K`` all leave it fewer. :func:`choose` takes the tightest
of them and says why; :func:`cgroup_cpus` reads the quota from cgroup v2 (``cpu.max``) or v1
(``cpu.cfs_quota_us``), through this process's own cgroup (``/proc/self/cgroup``) and its
ancestors. :func:`wait_env` is the OpenMP wait policy a worker starts with, set before torch
is imported (the OpenMP runtime reads it once, when it loads).

Pure: the roots of ``/proc`` and ``/sys/fs/cgroup`` and the environment are arguments, so
tests feed fake ones. No torch here (:func:`apply` imports it when called).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import TunerError

# the most threads --threads accepts: a typo (--threads 1000000) is an error, not a stall
MAX_THREADS = 1024

# OpenMP's wait after a parallel region, in busy-wait iterations (libgomp's GOMP_SPINCOUNT;
# about 1 µs per 100 on current x86 cores). Unset, libgomp spins 300000 (a few ms), so when a
# neighbour process takes a core, each of torch's threads burns its time slice waiting for the
# other: a trial ran 3-4x slower beside one busy process. PASSIVE (0) sleeps at once and costs
# ~1.5x on a quiet machine. A short spin keeps the quiet speed and most of the busy one
# (BENCHMARKS.md, "Threads and contention").
SPIN_COUNT = 10000
# the same wait for LLVM/Intel OpenMP runtimes (macOS, some builds), in ms
BLOCKTIME_MS = 1
# any of these set by the user: the wait policy is theirs, left alone
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@dataclass(frozen=True)
class Threads:
    """The torch threads of one worker and the reason, for its first line."""

    n: int
    why: str
    # chosen by tuner, not the user: fewer while other processes want the CPUs (Adaptive)
    adaptive: bool = False

    def __str__(self) -> str:
        fewer = "; fewer while other processes busy them" if self.adaptive and self.n > 1 else ""
        return f"{self.n} thread{'s' if self.n != 1 else ''} ({self.why}{fewer})"


def parse(value: str | int, name: str = "--threads") -> int:
    """A thread count as given (``--threads``, ``TUNER_THREADS``) -> a positive int, or a
    one-line TunerError naming the fix."""
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise TunerError(f"{name} {value}: give a whole number of threads from 1 to "
                         f"{MAX_THREADS} (e.g. {name} 2), or leave it out to fit the CPUs "
                         "this worker may use")
    return int(text)


def choose(*, explicit: int | None = None, workers: int = 1,
           environ: Mapping[str, str] | None = None, affinity: int | None = None,
           quota: float | None = None) -> Threads:
    """Threads for one of ``workers`` local workers: an explicit ``OMP_NUM_THREADS`` first,
    then ``explicit`` (``--threads``), else the tightest of the affinity mask (``affinity``
    CPUs), the cgroup quota (``quota`` CPUs, None: no limit) and ``SLURM_CPUS_PER_TASK``,
    split among the ``workers`` (at least 1 each)."""
    env = os.environ if environ is None else environ
    omp = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        return Threads(int(omp), f"OMP_NUM_THREADS={omp}")
    if explicit is not None:
        return Threads(explicit, "--threads / TUNER_THREADS")
    if affinity is None:
        affinity = affinity_cpus()
    limits = [(affinity, f"{affinity} CPU{'s' if affinity != 1 else ''} in its affinity mask")]
    if quota is not None:
        # a fractional quota rounds down: a second thread would be throttled half the time
        limits.append((max(1, math.floor(quota + 1e-9)), f"a cgroup CPU quota of {quota:g}"))
    slurm = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) >= 1:
        limits.append((int(slurm), f"SLURM_CPUS_PER_TASK={slurm}"))
    cpus, why = min(limits, key=lambda lim: lim[0])
    if workers > 1:
        return Threads(max(1, cpus // workers),
                       f"{why}, shared by {workers} local workers", adaptive=True)
    return Threads(cpus, why, adaptive=True)


def affinity_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cgroup_cpus(proc: Path = Path("/proc"), cgroup_fs: Path = Path("/sys/fs/cgroup")
                ) -> float | None:
    """CPUs this process's cgroup quota allows (the tightest of its cgroup's and its
    ancestors'), cgroup v1 or v2; None when there is no quota or none can be read."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    found: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2: one unified tree
            found += _walk(cgroup_fs, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                if (cgroup_fs / mount).is_dir():
                    found += _walk(cgroup_fs / mount, path, _v1_quota)
                    break
    return min(found) if found else None


def _walk(root: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas along ``path`` under ``root``, its own up to the root's. Inside a container
    the path named in /proc may be the host's: then the mount root is the cgroup itself."""
    here = root / path.strip("/")
    if not here.is_dir():
        here = root
    quotas = []
    while True:
        q = read(here)
        if q is not None:
            quotas.append(q)
        if here == root or root not in here.parents:
            return quotas
        here = here.parent


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def detect(*, explicit: int | None = None, workers: int = 1) -> Threads:
    """:func:`choose` on this machine: its affinity mask, cgroup and environment."""
    return choose(explicit=explicit, workers=workers, quota=cgroup_cpus())


def wait_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OpenMP wait variables to add to a process's environment before torch loads: none
    if the user set any of them."""
    env = os.environ if environ is None else environ
    if any(v in env for v in WAIT_VARS):
        return {}
    return {"GOMP_SPINCOUNT": str(SPIN_COUNT), "KMP_BLOCKTIME": str(BLOCKTIME_MS)}


def apply(threads: Threads) -> None:
    """Train with ``threads`` torch threads in this process."""
    import torch

    if torch.get_num_threads() != threads.n:
        torch.set_num_threads(threads.n)


# ---- fewer threads while the CPUs are contended ----------------------------------------------
# the least wall time between two decisions (s): /proc/stat counts in 10 ms ticks
MIN_WINDOW_S = 1.0
# a worker's first look at its CPUs, before its first trial (s): a neighbour that is busy
# already takes effect from the first epoch on
FIRST_LOOK_S = 0.25
# CPUs free for this worker round up from here: 1.7 free CPUs are 2 threads, 1.6 are 1
ROUND_UP_FROM = 0.7


def fitting(ceiling: int, cpus: int, wall_s: float, idle_s: float, own_s: float) -> int:
    """Threads that fit what this worker's CPUs gave it over ``wall_s`` seconds: the CPU time
    it used (``own_s``, spinning included) and the time they stood idle (``idle_s``), per
    second of wall time, is what other processes left it; at least 1, at most ``ceiling``."""
    if wall_s <= 0:
        return ceiling
    free = min(cpus, (idle_s + own_s) / wall_s)
    return max(1, min(ceiling, math.floor(free + 1 - ROUND_UP_FROM)))


def idle_seconds(cpus: Collection[int], proc: Path = Path("/proc")) -> float | None:
    """Idle + iowait seconds of ``cpus`` since boot (``/proc/stat``); None where unreadable."""
    try:
        text = (proc / "stat").read_text()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, seen = 0, 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            fields = rest.split()
            total += int(fields[3]) + (int(fields[4]) if len(fields) > 4 else 0)
            seen += 1
    return total / tick if seen else None


class Adaptive:
    """Steps a worker's torch threads down while other processes want its CPUs, and back up
    to ``threads.n`` when they leave. Called at epoch boundaries (:meth:`between_epochs`);
    decides once at least :data:`MIN_WINDOW_S` has passed, from the idle time of the CPUs in
    its affinity mask and its own CPU time over the window. OpenMP threads that spin-wait for
    a descheduled sibling make a contended epoch 3-4x slower; one thread does not wait."""

    def __init__(self, threads: Threads, cpus: Collection[int], *,
                 proc: Path = Path("/proc"),
                 clock: Callable[[], float] = time.monotonic,
                 cpu_time: Callable[[], float] = time.process_time,
                 set_threads: Callable[[int], None] | None = None) -> None:
        self.ceiling, self.cpus, self.proc = threads.n, frozenset(cpus), proc
        self.clock, self.cpu_time = clock, cpu_time
        self.set_threads = set_threads or _set_torch_threads
        self.n = threads.n
        self.changes: list[int] = []  # the counts stepped to, for tests and benchmarks
        self._mark()

    @classmethod
    def for_worker(cls, threads: Threads) -> Adaptive | None:
        """An Adaptive for this process, or None where tuner did not choose the count (the
        user did), there is one thread to start with, or /proc/stat cannot be read."""
        if not threads.adaptive or threads.n < 2 or not hasattr(os, "sched_getaffinity"):
            return None
        cpus = os.sched_getaffinity(0)
        if idle_seconds(cpus) is None:
            return None
        adaptive = cls(threads, cpus)
        time.sleep(FIRST_LOOK_S)
        adaptive.decide()
        return adaptive

    def _mark(self) -> None:
        self._t, self._own = self.clock(), self.cpu_time()
        self._idle = idle_seconds(self.cpus, self.proc)

    def between_epochs(self) -> None:
        if self.clock() - self._t >= MIN_WINDOW_S:
            self.decide()

    def decide(self) -> None:
        """Set the threads that fit the window since the last decision; start a new one."""
        wall = self.clock() - self._t
        idle = idle_seconds(self.cpus, self.proc)
        if idle is None or self._idle is None:
            return
        n = fitting(self.ceiling, len(self.cpus), wall, idle - self._idle,
                    self.cpu_time() - self._own)
        if n != self.n:
            self.set_threads(n)
            self.n = n
            self.changes.append(n)
        self._mark()


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
