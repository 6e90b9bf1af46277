"""Helpers shared by the benchmark scripts: the hand-written reference objective, the study
spec a benchmark runs, an epoch clock, the machine line and plain-text tables.

The scripts run from a clone (``python benchmarks/NAME.py``): this file puts the clone's root
on ``sys.path`` so ``tuner`` imports without being installed.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # a clone, not installed

import optuna  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tuner import vocab  # noqa: E402
from tuner.config import (  # noqa: E402
    StudySpec,
    load_spec,
    parse_spec,
    space,  # noqa: E402
)
from tuner.device import resolve  # noqa: E402
from tuner.kinds import InputKind, Inputs  # noqa: E402
from tuner.models import build  # noqa: E402

DEFAULT_DATA_DIR = os.environ.get("TUNER_DATA_DIR", "../shared/data")
# the hand-written objective's input normalisation: the usual MNIST constants
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# ---- the study a benchmark runs -------------------------------------------------------------
def bench_spec(path: str | Path, **overrides: Any) -> StudySpec:
    """The study file at ``path`` with top-level keys replaced (``epochs=4``,
    ``pruner={"name": "none"}``, ``space={...}``), validated again."""
    raw = load_spec(path).model_dump(mode="json")
    raw.update(overrides)
    return parse_spec(raw, source=str(path))


def fix_params(spec: StudySpec, fixed: Mapping[str, Any]) -> StudySpec:
    """``spec`` with the parameters in ``fixed`` made constants (same cost for every trial)."""
    raw = spec.model_dump(mode="json")
    raw["space"] = {**raw["space"], **{k: {"value": v} for k, v in fixed.items()}}
    return parse_spec(raw, source=spec.name)


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["batch_size=256", "optimizer=adam"]`` -> {"batch_size": 256, "optimizer": "adam"}."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def quiet_libraries() -> None:
    """No per-trial log lines from Optuna, no warnings about its experimental features (tuner's
    CLI hides the same ones)."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(experimental|Heartbeat of storage).*")


# ---- timing ---------------------------------------------------------------------------------
@dataclass
class EpochClock:
    """When each validation score was reported, in seconds from ``start``."""

    start: float = field(default_factory=time.perf_counter)
    # (seconds, trial number, epoch, value)
    reports: list[tuple[float, int, int, float]] = field(default_factory=list)

    def note(self, trial: int, epoch: int, value: float) -> None:
        self.reports.append((time.perf_counter() - self.start, trial, epoch, value))

    def first_reaching(self, target: float, maximize: bool = True) -> float | None:
        """Seconds until some trial first reported a value at or past ``target``."""
        for t, _, _, v in self.reports:
            if (v >= target) if maximize else (v <= target):
                return t
        return None


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) and of its children that
    have exited (DataLoader workers, ``tuner worker`` processes), in seconds. Less skewed
    than wall time when other jobs share the CPU."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class LoadMonitor(threading.Thread):
    """Samples the 1-minute load average while a benchmark runs: on a shared machine the
    timings mean little without it."""

    def __init__(self, interval: float = 5.0):
        super().__init__(name="load-monitor", daemon=True)
        self.interval, self.samples, self.halt = interval, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        s = self.samples
        return (f"1-min load average during the run: mean {sum(s) / len(s):.1f}, "
                f"min {min(s):.1f}, max {max(s):.1f} ({os.cpu_count()} cores)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str) -> str:
    """One line for the head of a table: what ran, where, with what, under what load."""
    device = torch.device(device)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    # OMP_WAIT_POLICY matters on a shared CPU: with the default, torch's 2 OpenMP threads
    # slow down 5-80x whenever another process wants a core (see BENCHMARKS.md)
    omp = os.environ.get("OMP_WAIT_POLICY", "default")
    return (f"{where}, OMP_WAIT_POLICY={omp}; torch {torch.__version__}, optuna "
            f"{optuna.__version__}, python {platform.python_version()}; load average "
            f"{load_average()}")


def resolve_device(name: str) -> torch.device:
    return torch.device(resolve(name))


# ---- tables ---------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (Markdown pipe syntax, so it pastes into BENCHMARKS.md). Floats
    are printed as given: format them before."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(c: Any) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c)


def fmt_s(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f}"


# ---- the hand-written reference objective -------------------------------------------------
def _split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: the same seeded hold-out as ``tuner.data.carve``, computed here
    independently so both pipelines validate on the same 10% of MNIST's training set."""
    n_val = min(max(round(n * fraction), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values.tolist(), perm[:n_val].sort().values.tolist()


_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def handwritten_objective(
    spec: StudySpec, data_dir: str, device: torch.device, *, num_workers: int = 2,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> Callable[[optuna.Trial], float]:
    """The objective people write by hand for ``study.optimize``: torchvision's MNIST with
    ``ToTensor() + Normalize`` per sample, a shuffling ``DataLoader``, ``loss.item()`` per
    batch, the dataset opened in every trial.

    It draws the same parameters as tuner (``space.suggest``), builds the same model
    (``tuner.models.build``), seeds it the same way (study seed + trial number), uses the same
    optimizer and learning-rate schedule and validates on the same held-out images, so the
    two differ only in how data reaches the model and how often the host waits."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    if spec.data not in _TORCHVISION:
        raise SystemExit(f"the hand-written objective reads torchvision MNIST-like data, not "
                         f"{spec.data!r}; use a study file with data: mnist")
    if not isinstance(spec.validation, float):
        raise SystemExit("the hand-written objective needs a validation fraction, not k-fold")
    cls = getattr(datasets, _TORCHVISION[spec.data])
    cuda = device.type == "cuda"
    # loader workers start each epoch and stop when it ends (not persistent_workers: those of
    # a finished trial would live on until garbage collection, and the next trial's forked
    # workers would try to shut them down)
    loader_kw = {"num_workers": num_workers, "pin_memory": cuda}

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial, spec)
        p = {**vocab.defaults(vocab.TRAINING_KNOBS), **params}
        tfm = transforms.Compose([transforms.ToTensor(),
                                  transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
        full = cls(data_dir, train=True, download=False, transform=tfm)
        train_idx, val_idx = _split_indices(len(full), spec.validation, spec.seed)
        train_loader = DataLoader(Subset(full, train_idx), batch_size=int(p["batch_size"]),
                                  shuffle=True, **loader_kw)
        val_loader = DataLoader(Subset(full, val_idx), batch_size=1000, **loader_kw)

        torch.manual_seed(spec.seed + trial.number)
        model = build(spec.model, params, Inputs(InputKind.image, (1, 28, 28)), 10).to(device)
        opt = _optimizer(p, model)
        if p["schedule"] not in ("constant", "cosine"):
            raise SystemExit(f"the hand-written objective knows constant and cosine schedules, "
                             f"not {p['schedule']!r}")
        epochs = min(int(p["epochs"] or spec.epochs), spec.epochs)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
                 if p["schedule"] == "cosine" else None)
        accuracy = 0.0
        for epoch in range(1, epochs + 1):
            model.train()
            running = 0.0
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                running += loss.item()  # the usual per-batch sync, for a log or a progress bar
            if sched is not None:
                sched.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in val_loader:
                    correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
            accuracy = correct / len(val_idx)
            if on_epoch is not None:
                on_epoch(trial.number, epoch, accuracy)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    return objective


def _optimizer(p: Mapping[str, Any], model: torch.nn.Module) -> torch.optim.Optimizer:
    lr, wd = float(p["lr"]), float(p["weight_decay"])
    if p["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    if p["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    if p["optimizer"] in ("sgd", "sgd_momentum"):
        momentum = float(p["momentum"]) if p["optimizer"] == "sgd_momentum" else 0.0
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    raise SystemExit(f"the hand-written objective knows adam, adamw, sgd, sgd_momentum; "
                     f"not {p['optimizer']!r}")
