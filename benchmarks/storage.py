"""What tuner's worker loop costs per trial in storage round trips, against plain Optuna on
the same database; and how long a killed worker's trial takes to be retried.

Trials do nothing (one report, then return), so the time is the storage's: asking a trial,
its params, reports, user attrs, telling it, and tuner's budget slot and heartbeats. Every
worker is its own process; throughput is counted from the trials' own timestamps (first
start to last finish), so process start-up (importing torch) is left out.

    .venv/bin/python benchmarks/storage.py     # SQLite; PostgreSQL too if $TUNER_TEST_POSTGRES_URL
    .venv/bin/python benchmarks/storage.py --trials 400 --workers 1 4 8 \\
        --postgres postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/storage.py --kill               # kill -> retry times only
    .venv/bin/python benchmarks/storage.py --trips              # statements per trial only
    .venv/bin/python benchmarks/storage.py --profile sqlite     # where one worker's time goes
    .venv/bin/python benchmarks/storage.py --scale --workers 1 8 32 64  # scaling out, +PgBouncer
    .venv/bin/python benchmarks/storage.py --floor --compare /path/to/old/checkout
        # statements and ms per trial against the round-trip floor, this code and the old

``--floor`` runs one trial's storage calls in one process (start, params, attrs, per epoch a
report, a pruning check and a heartbeat, closing attrs, tell), unfused and as fused groups,
on SQLite, PostgreSQL and PgBouncer; statements are counted with a ``before_cursor_execute``
listener (exact), milliseconds are wall time of the storage calls (3 runs: medians, spread).

Columns: ``optuna`` is ``study.optimize(n_trials=N/K)`` in K processes on a plain
``RDBStorage(url)``; ``optuna+tuner storage`` the same on the storage tuner opens
(``tuner.storage.connect``: SQLite WAL and BEGIN IMMEDIATE, heartbeats on, which makes
Optuna start a heartbeat thread per trial); ``tuner`` is K ``tuner worker`` processes sharing
a budget of N.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import os
import platform
import pstats
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FIT = textwrap.dedent("""
    import time

    def fit(params, ctx):
        start = 1
        if (state := ctx.load_checkpoint()) is not None:
            start = state["epoch"] + 1
        for epoch in range(start, ctx.max_epochs + 1):
            time.sleep(params["sleep"])
            ctx.save_checkpoint({"epoch": epoch})
            ctx.report(epoch, params["x"])
        return params["x"]
""")


def study_file(folder: Path, name: str, trials: int, epochs: int = 1, sleep: float = 0.0,
               checkpoint: bool = False) -> Path:
    (folder / "fit.py").write_text(FIT)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        trainer: fit.py:fit
        task: regression
        metric: mse
        epochs: {epochs}
        trials: {trials}
        sampler: random
        pruner: none
        checkpoint: {str(checkpoint).lower()}
        space:
          x: {{type: float, low: 0.0, high: 1.0}}
          sleep: {sleep}
    """))
    return path


@contextmanager
def database(backend: str, base: str | None, folder: Path) -> Iterator[str]:
    """A fresh, empty database: a new SQLite file, or a new database on the server."""
    if backend == "sqlite":
        path = folder / f"{secrets.token_hex(4)}.db"
        yield f"sqlite:///{path}"
        return
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from tuner.storage import normalize_url

    name = f"tuner_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(normalize_url(base), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


# ---- plain Optuna workers -----------------------------------------------------------------
def optuna_worker(url: str, name: str, n: int, seed: int, tuner_storage: bool) -> None:
    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if tuner_storage:
        from tuner.storage import connect

        storage = connect(url)
    else:
        from tuner.storage import normalize_url

        storage = optuna.storages.RDBStorage(normalize_url(url).render_as_string(False))
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=seed))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, 1)
        trial.should_prune()
        return x

    study.optimize(objective, n_trials=n)


def throughput(url: str, name: str) -> tuple[int, float]:
    """Finished trials, and trials per second from first start to last finish."""
    import optuna

    from tuner.storage import connect

    ts = [t for t in optuna.load_study(study_name=name, storage=connect(url)).trials
          if t.datetime_complete is not None and t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts))
    return len(ts), len(ts) / max(span.total_seconds(), 1e-9)


def run_optuna(url: str, trials: int, workers: int, tuner_storage: bool) -> float:
    import optuna

    from tuner.storage import connect

    name = "plain"
    optuna.create_study(study_name=name, storage=connect(url))
    procs = [subprocess.Popen([sys.executable, __file__, "--optuna-worker", url, name,
                               str(trials // workers), str(i), str(int(tuner_storage))])
             for i in range(workers)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"an optuna worker failed ({p.returncode})")
    n, rate = throughput(url, name)
    assert n == trials // workers * workers, n
    return rate


def run_tuner(url: str, trials: int, workers: int, folder: Path) -> float:
    from tuner import study as st
    from tuner.config import load_spec
    from tuner.storage import connect

    spec = load_spec(study_file(folder, "bench", trials))
    st.create_or_resume(connect(url), spec)
    procs = [subprocess.Popen([sys.executable, "-m", "tuner", "worker", "bench", "--storage", url,
                               "--device", "cpu", "--quiet", "--worker-index", str(i),
                               "--checkpoint-dir", str(folder / "ckpt")])
             for i in range(workers)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a tuner worker failed ({p.returncode})")
    n, rate = throughput(url, "bench")
    assert n == trials, n
    return rate


def overhead_table(backends: dict[str, str | None], trials: int, workers: list[int]) -> None:
    print(f"\n{trials} trivial trials; trials/s (higher is better) and ms of storage time per "
          "trial per worker\n")
    head = f"{'storage':<11}{'workers':>8}{'optuna':>16}{'optuna+tuner storage':>24}{'tuner':>16}"
    print(head)
    print("-" * len(head))
    for backend, base in backends.items():
        for k in workers:
            rates = []
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                for mode in ("optuna", "optuna+", "tuner"):
                    with database(backend, base, folder) as url:
                        if mode == "tuner":
                            rates.append(run_tuner(url, trials, k, folder))
                        else:
                            rates.append(run_optuna(url, trials, k, mode == "optuna+"))
            cells = "".join(f"{r:9.1f} ({1000 * k / r:4.0f})".rjust(w)
                            for r, w in zip(rates, (16, 24, 16), strict=True))
            print(f"{backend:<11}{k:>8}{cells}", flush=True)


# ---- scaling out: connections, with and without PgBouncer ---------------------------------
def _server_sampler(admin_url: str, db: str, stop: threading.Event, seen: list[int]) -> None:
    """Connections to database ``db`` on the PostgreSQL server, every 50 ms."""
    import sqlalchemy as sa

    from tuner.storage import normalize_url

    engine = sa.create_engine(normalize_url(admin_url), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        while not stop.wait(0.05):
            seen.append(conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db"), {"db": db}
            ).scalar_one())
            conn.rollback()
    engine.dispose()


def _postgres_cpu_s() -> float:
    """CPU seconds (user + system) used so far by every postgres process on this machine."""
    total = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and open(f"/proc/{pid}/comm").read().strip() == "postgres":
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


class LightRunner:
    """What a trial costs tuner's worker loop in the database, without the training: the
    worker attrs at the start, a report and a pruning check each epoch (after a sleep), the
    metrics at the end. Real :class:`tuner.runtime.worker.Worker` around it (budget slots, the
    heartbeat thread, the reaper lease, tell), but no torch: a worker is ~65 MB, not ~700 MB,
    so 64 of them fit beside the other users of a 24 GiB machine."""

    def __init__(self, epochs: int, sleep: float):
        from types import SimpleNamespace

        self.epochs, self.sleep = epochs, sleep
        self.stop, self.patience, self.on_epoch = threading.Event(), None, None
        self.assets = SimpleNamespace(preflight=lambda: None)

    def run(self, trial):
        from optuna.trial import TrialState

        from tuner import storage
        from tuner.trials import Outcome

        x = trial.suggest_float("x", 0.0, 1.0)
        storage.set_user_attrs(trial, {"worker": {"host": platform.node(), "pid": os.getpid()},
                                       "lineage": trial.number})
        start = time.monotonic()
        for epoch in range(1, self.epochs + 1):
            time.sleep(self.sleep)
            trial.report(x, epoch)
            trial.should_prune()
            self.on_epoch(trial.number, epoch, x)
        storage.set_user_attrs(trial, {"epochs": self.epochs, "wall_s": time.monotonic() - start})
        return Outcome(TrialState.COMPLETE, value=x, values=(x,))

    def cleanup(self, outcome) -> None:
        pass

    def drop_checkpoint(self, lineage: int) -> None:
        pass


def light_worker(url: str, name: str, index: int, ready: str, n: int, epochs: int,
                 sleep: float) -> None:
    """One worker process of the scaling table: imports, says it is ready, waits for the
    other ``n`` (so all start at once, not staggered by their imports), runs the worker loop,
    and leaves its peak resident memory in ``ready``."""
    import resource

    from tuner import study as st
    from tuner.runtime.worker import Worker
    from tuner.storage import Heartbeat, connect

    warnings.filterwarnings("ignore")
    hb = Heartbeat()
    handle = st.load(connect(url, hb, wait=60), name, worker_index=index)
    Path(ready, f"ready-{os.getpid()}").touch()
    while len(list(Path(ready).glob("ready-*"))) < n:
        time.sleep(0.05)
    Worker(handle, LightRunner(epochs, sleep), heartbeat=hb, db_patience=60).run()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(ready, f"rss-{os.getpid()}").write_text(str(peak_kb))


def run_light(url: str, trials: int, workers: int, folder: Path, epochs: int,
              sleep: float) -> list[int]:
    """``workers`` light worker processes sharing a budget of ``trials``; their peak RSS (KB)."""
    from tuner import study as st
    from tuner.config import load_spec
    from tuner.storage import connect

    name = f"scale{secrets.token_hex(3)}"
    ready = folder / name
    ready.mkdir()
    storage = connect(url, wait=60)
    st.create_or_resume(storage, load_spec(study_file(folder, name, trials, epochs, sleep)))
    storage.engine.dispose()  # this process holds no connection while the workers run
    procs = [subprocess.Popen([sys.executable, __file__, "--light-worker", url, name, str(i),
                               str(ready), str(workers), str(epochs), str(sleep)])
             for i in range(workers)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a light worker failed ({p.returncode})")
    return [int(f.read_text()) for f in ready.glob("rss-*")]


def storage_ms(url: str, name: str, sleep_per_trial: float,
               numbers: range | None = None) -> tuple[int, float]:
    """Finished trials, and the mean storage time per trial in ms: each trial's wall time
    from its start to its worker's next start (its reports, tell and the next trial's
    start, i.e. the whole worker loop), less the trainer's sleep; a worker's last trial is
    left out (it has no next start). ``numbers``: only those trials."""
    import optuna

    from tuner.storage import connect

    storage = connect(url)
    ts = [t for t in optuna.load_study(study_name=name, storage=storage).trials
          if t.state.name == "COMPLETE"]
    storage.engine.dispose()
    by_worker: dict[int, list] = {}
    for t in ts:
        by_worker.setdefault(t.user_attrs["worker"]["pid"], []).append(t)
    costs = []
    for own in by_worker.values():
        own.sort(key=lambda t: t.datetime_start)
        for t, nxt in zip(own, own[1:], strict=False):
            if numbers is None or t.number in numbers:
                costs.append((nxt.datetime_start - t.datetime_start).total_seconds()
                             - sleep_per_trial)
    return len(ts), 1000 * sum(costs) / max(len(costs), 1)


def _front(url: str, front: str | None) -> str:
    from sqlalchemy.engine import make_url

    if front is None:
        return url
    return make_url(front).set(database=make_url(url).database).render_as_string(
        hide_password=False)


def _measured(base: str, front: str | None, trials: int, k: int, epochs: int, sleep: float,
              folder: Path) -> dict[str, float]:
    """One run of ``k`` light workers on a fresh database: storage ms per trial, most server
    connections at once, PostgreSQL CPU ms per trial, peak worker RSS (MB)."""
    from sqlalchemy.engine import make_url

    with database("postgresql", base, folder) as url:
        db = make_url(url).database
        run_url = _front(url, front)
        stop, seen = threading.Event(), [0]
        sampler = threading.Thread(target=_server_sampler, args=(base, db, stop, seen))
        sampler.start()
        cpu = _postgres_cpu_s()
        rss = run_light(run_url, trials, k, folder, epochs, sleep)
        cpu = _postgres_cpu_s() - cpu
        stop.set()
        sampler.join()
        name = next(p.name for p in folder.glob("scale*") if p.is_dir())
        n, ms = storage_ms(url, name, epochs * sleep)
        assert n == trials, (n, trials)
        for p in folder.glob("scale*"):  # the next run's study gets a new name and folder
            if p.is_dir():
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()
    return {"ms": ms, "connections": max(seen), "cpu": 1000 * cpu / trials,
            "rss": max(rss) / 1024}


def _available_gib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def scale_table(base: str, bouncer: str | None, workers: list[int], per_worker: int,
                epochs: int, sleep: float, long_trials: int, keep_free_gib: float) -> None:
    """K light worker processes on one PostgreSQL database, directly and through PgBouncer
    (transaction pooling): storage ms per trial, most server connections at once, PostgreSQL
    CPU ms per trial (every postgres process of the machine: others' included); then one
    study of ``long_trials`` trials: storage ms per trial around trial 100 and around the
    end."""
    paths = [("direct", None)] + ([("pgbouncer", bouncer)] if bouncer else [])
    with tempfile.TemporaryDirectory() as tmp:
        probe = _measured(base, None, 20, 1, epochs, sleep, Path(tmp))
    fit = int((_available_gib() - keep_free_gib) * 1024 // (probe["rss"] * 1.2))
    print(f"\none light worker peaks at {probe['rss']:.0f} MB resident; {_available_gib():.1f} GiB "
          f"available, keeping {keep_free_gib:g} GiB free for others: up to {fit} workers")
    ks = [k for k in workers if k <= fit]
    if len(ks) < len(workers):
        print(f"left out for memory: {[k for k in workers if k > fit]} workers")
    print(f"\nK light workers (max(100, {per_worker}K) trials of {epochs} x {sleep * 1000:.0f} ms "
          "sleep + report) on PostgreSQL: storage ms per trial per worker (the worker loop "
          "less the sleep), most server connections at once, PostgreSQL CPU ms per trial, "
          "peak RSS per worker\n")
    head = (f"{'path':<11}{'workers':>8}{'trials':>8}{'ms/trial':>10}{'connections':>13}"
            f"{'db CPU ms':>11}{'RSS MB':>8}")
    print(head)
    print("-" * len(head))
    for path, front in paths:
        for k in ks:
            trials = max(100, per_worker * k)
            with tempfile.TemporaryDirectory() as tmp:
                m = _measured(base, front, trials, k, epochs, sleep, Path(tmp))
            print(f"{path:<11}{k:>8}{trials:>8}{m['ms']:>10.1f}{m['connections']:>13}"
                  f"{m['cpu']:>11.1f}{m['rss']:>8.0f}", flush=True)
    k = min(8, fit)
    lo, hi = range(50, 151), range(long_trials - 150, long_trials - 49)
    print(f"\none study of {long_trials} trials, {k} light workers, no sleep: storage ms per "
          f"trial around trial 100 ({lo.start}-{lo.stop - 1}) and around trial "
          f"{long_trials - 100} ({hi.start}-{hi.stop - 1})\n")
    late_head = f"at {long_trials - 100}"
    head = f"{'path':<11}{'workers':>8}{'at 100':>10}{late_head:>10}{'ratio':>8}"
    print(head)
    print("-" * len(head))
    for path, front in paths:
        with tempfile.TemporaryDirectory() as tmp, database("postgresql", base,
                                                            Path(tmp)) as url:
            run_light(_front(url, front), long_trials, k, Path(tmp), 1, 0.0)
            name = next(p.name for p in Path(tmp).glob("scale*") if p.is_dir())
            _, early = storage_ms(url, name, 0.0, lo)
            _, late = storage_ms(url, name, 0.0, hi)
        print(f"{path:<11}{k:>8}{early:>10.1f}{late:>10.1f}{late / early:>8.2f}", flush=True)


# ---- kill -9 -> retry ---------------------------------------------------------------------
def kill_to_retry(url: str, folder: Path, heartbeat: int, grace: int) -> tuple[float, float]:
    """Three workers, a budget of two 4-epoch trials: one worker waits idle. Kill one busy
    worker after its second epoch. Returns seconds from the kill to its trial failing (retry
    queued) and to the retry starting on the idle worker."""
    import optuna

    from tuner import study as st
    from tuner.config import load_spec
    from tuner.storage import connect

    spec = load_spec(study_file(folder, "kill", trials=2, epochs=4, sleep=1.0, checkpoint=True))
    storage = connect(url)
    st.create_or_resume(storage, spec)
    study = optuna.load_study(study_name="kill", storage=storage)
    args = ["--storage", url, "--device", "cpu", "--quiet", "--heartbeat", str(heartbeat),
            "--grace-period", str(grace), "--checkpoint-dir", str(folder / "ckpt")]
    procs = [subprocess.Popen([sys.executable, "-m", "tuner", "worker", "kill", *args,
                               "--worker-index", str(i)]) for i in range(3)]
    try:
        while True:
            running = [t for t in study.get_trials(deepcopy=False)
                       if t.state.name == "RUNNING" and len(t.intermediate_values) >= 2]
            if running:
                break
            time.sleep(0.05)
        victim = running[0]
        pid = victim.user_attrs["worker"]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed, killed_at = time.monotonic(), dt.datetime.now()
        failed = None
        while True:
            ts = study.get_trials(deepcopy=False)
            if failed is None and ts[victim.number].state.name == "FAIL":
                failed = time.monotonic() - killed
            retry = next((t for t in ts if t.user_attrs.get("retry_of") == victim.number
                          and t.datetime_start is not None), None)
            if failed is not None and retry is not None:
                return failed, (retry.datetime_start - killed_at).total_seconds()
            time.sleep(0.02)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()


def kill_table(backends: dict[str, str | None], settings: list[tuple[int, int]]) -> None:
    print("\nkill -9 of a worker mid-trial: seconds until its trial is failed and its retry "
          "queued, and until the retry starts on an idle worker\n")
    head = f"{'storage':<11}{'heartbeat/grace':>17}{'failed+queued':>15}{'retry started':>15}"
    print(head)
    print("-" * len(head))
    for backend, base in backends.items():
        for hb, grace in settings:
            with tempfile.TemporaryDirectory() as tmp, database(backend, base, Path(tmp)) as url:
                failed, started = kill_to_retry(url, Path(tmp), hb, grace)
            print(f"{backend:<11}{f'{hb} s / {grace} s':>17}{failed:>14.1f}s{started:>14.1f}s",
                  flush=True)


# ---- round trips and profile --------------------------------------------------------------
@contextmanager
def counting(engine) -> Iterator[dict[str, int]]:
    """Count the SQL statements and commits sent through ``engine`` (all threads)."""
    import sqlalchemy as sa

    counts = {"statements": 0, "commits": 0}

    def on_execute(*_a: object) -> None:
        counts["statements"] += 1

    def on_commit(*_a: object) -> None:
        counts["commits"] += 1

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    try:
        yield counts
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)


def round_trips(url: str, trials: int, folder: Path) -> dict[str, tuple[float, float, float]]:
    """Per trial, in one process: SQL statements, commits, and CPU ms, for plain Optuna on
    tuner's storage and for tuner's worker loop."""
    import optuna

    from tuner import study as st
    from tuner.config import load_spec
    from tuner.runtime.worker import Worker
    from tuner.settings import Settings
    from tuner.storage import Heartbeat, connect, engine_of
    from tuner.trials import TrialRunner

    warnings.filterwarnings("ignore")
    import torch  # noqa: F401  (imported by the first trial otherwise)

    out = {}
    storage = connect(url)
    study = optuna.create_study(study_name="plain", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, 1)
        trial.should_prune()
        return x

    with counting(storage.engine) as c:
        cpu = time.process_time()
        study.optimize(objective, n_trials=trials)
        cpu = time.process_time() - cpu
    out["optuna"] = (c["statements"] / trials, c["commits"] / trials, 1000 * cpu / trials)

    hb = Heartbeat()
    handle = st.create_or_resume(connect(url, hb), load_spec(study_file(folder, "p", trials)))
    worker = Worker(handle, TrialRunner.of(handle.spec, Settings(checkpoint_dir=str(folder))),
                    heartbeat=hb)
    with counting(engine_of(handle.study)) as c:
        cpu = time.process_time()
        worker.run()
        cpu = time.process_time() - cpu
    out["tuner"] = (c["statements"] / trials, c["commits"] / trials, 1000 * cpu / trials)
    return out


def trips_table(backends: dict[str, str | None], trials: int) -> None:
    print(f"\nper trial, one process, {trials} trials: SQL statements, commits, CPU ms "
          "(client side)\n")
    head = f"{'storage':<11}{'loop':<8}{'statements':>11}{'commits':>9}{'CPU ms':>8}"
    print(head)
    print("-" * len(head))
    for backend, base in backends.items():
        with tempfile.TemporaryDirectory() as tmp, database(backend, base, Path(tmp)) as url:
            for loop, (stmts, commits, cpu) in round_trips(url, trials, Path(tmp)).items():
                print(f"{backend:<11}{loop:<8}{stmts:>11.1f}{commits:>9.1f}{cpu:>8.1f}",
                      flush=True)


def profile(url: str, trials: int, folder: Path) -> None:
    """One tuner worker in this process under cProfile: where the time per trial goes."""
    from tuner import study as st
    from tuner.config import load_spec
    from tuner.runtime.worker import Worker
    from tuner.settings import Settings
    from tuner.storage import Heartbeat, connect
    from tuner.trials import TrialRunner

    warnings.filterwarnings("ignore")
    hb = Heartbeat()
    handle = st.create_or_resume(connect(url, hb), load_spec(study_file(folder, "p", trials)))
    worker = Worker(handle, TrialRunner.of(handle.spec, Settings(checkpoint_dir=str(folder))),
                    heartbeat=hb)
    import torch  # noqa: F401  (imported by the first trial otherwise)

    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.runcall(worker.run)
    took = time.perf_counter() - start
    print(f"{trials} trials in {took:.2f}s under cProfile ({trials / took:.1f}/s)")
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(r"tuner/|optuna/(study|trial|storages)", 30)


# ---- storage at its floor ------------------------------------------------------------------
# parameters a scripted trial draws: as many as search_spaces/mnist_mlp.yaml has
PARAMS = 8


def _scripted_trials(study, budget, epochs: int, k: int) -> int:
    """One unfused trial (``k`` = 1) or one fused group of ``k``, through the storage calls
    tuner's worker and runner make for a lightweight trial: start (budget slot, first
    heartbeat), its ``PARAMS`` params, the start attrs, per epoch a report, a pruning check and a heartbeat,
    the closing attrs with the train-loss curve, the budget's device time, the tell. Returns
    the trials made."""
    from optuna.trial import TrialState

    from tuner import storage
    from tuner.trial_schema import STATE_ATTR

    ts = ([storage.start_trial(study, budget)] if k == 1
          else storage.start_trials(study, budget, k))
    start = [(t, {"lineage": t.number, "worker": {"host": platform.node(), "pid": os.getpid(),
                                                 "device": "cpu"}}) for t in ts]
    # a tuner with storage.drawing writes a draw's params in one transaction (a lone trial's
    # with its start attrs) and a trial's curve with its closing attrs; an older one
    # (--compare) wrote each apart
    drawing = getattr(storage, "drawing", None)
    if k == 1 and not drawing:
        storage.set_user_attrs(*start[0])
    elif k > 1:
        storage.set_user_attrs_many(start)
    xs = []
    for t, attrs in start:
        with (drawing(t, attrs if k == 1 else None) if drawing else contextlib.nullcontext()):
            xs.append([t.suggest_float(f"x{i}", 0.0, 1.0) for i in range(PARAMS)][0])
    for epoch in range(1, epochs + 1):
        if k == 1:
            ts[0].report(xs[0], epoch)
            ts[0].should_prune()
        else:
            storage.report_many([(t, [(epoch, x)]) for t, x in zip(ts, xs, strict=True)])
            storage.should_prune_many(ts)
        for t in ts:  # what the heartbeat thread does (every few seconds, not every epoch)
            storage.record_heartbeat(t)
    closing = [(t, {"wall_time_s": 0.1, "device": "cpu", "seed": t.number, "epochs_run": epochs,
                    "versions": {"torch": "2", "tuner": "1"}, "train_loss": 0.5,
                    STATE_ATTR: "complete"}) for t in ts]
    curves = [(t, {storage.TRAIN_LOSS_CURVE_ATTR: [0.5] * epochs}) for t in ts]
    told = [(t, TrialState.COMPLETE, [x]) for t, x in zip(ts, xs, strict=True)]
    if drawing:  # the closing attrs, curves and device time with the results
        attrs = [(a, c) for (_, a), (_, c) in zip(closing, curves, strict=True)]
        storage.tell_many(study, told, attrs=attrs, also=[budget.spend_statement(0.1)])
    else:
        for t, curve in curves:
            storage.set_system_attrs(t, curve)
        storage.set_user_attrs_many(closing, finished=k > 1)
        budget.spend(0.1)
        storage.tell_many(study, told)
    return len(ts)


def _select1_ms(engine, n: int = 200) -> float:
    """Median milliseconds of one ``SELECT 1`` transaction through ``engine``'s pool (what
    the smallest database call of a trial costs: the round trip at the server's latency)."""
    import statistics

    import sqlalchemy as sa

    took = []
    for _ in range(n):
        begun = time.perf_counter()
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).scalar_one()
            conn.commit()
        took.append(time.perf_counter() - begun)
    return 1000 * statistics.median(took)


def _write_ms(engine, name: str, n: int = 100) -> float:
    """Median milliseconds of one transaction that writes one row (the study's budget row,
    to the value it holds) and commits: a round trip that waits for the server's commit."""
    import statistics

    import sqlalchemy as sa

    took = []
    for _ in range(n):
        begun = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE tuner_budgets SET taken = taken WHERE study_name = :n"),
                         {"n": name})
        took.append(time.perf_counter() - begun)
    return 1000 * statistics.median(took)


def floor_once(url: str, folder: Path, epochs: int, k: int, trials: int) -> dict[str, float]:
    """Statements, ms per trial and the floor on one fresh database, for ``trials`` trials
    run as unfused trials (``k`` = 1) or as fused groups of ``k``."""
    import optuna

    from tuner import study as st
    from tuner.config.spec import load_spec
    from tuner.storage import Budget, Heartbeat, connect, engine_of

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = f"floor{secrets.token_hex(3)}"
    hb = Heartbeat()
    handle = st.create_or_resume(connect(url, hb), load_spec(
        study_file(folder, name, trials + 2 * k, epochs)))
    study, engine = handle.study, engine_of(handle.study)
    budget = Budget(engine, name)
    _scripted_trials(study, budget, epochs, k)  # warm: the pool, Optuna's caches
    made, took = 0, 0.0
    with counting(engine) as c:
        while made < trials:
            begun = time.perf_counter()
            made += _scripted_trials(study, budget, epochs, k)
            took += time.perf_counter() - begun
    rt, wt = _select1_ms(engine), _write_ms(engine, name)
    # what a trial's database work costs at least: one round trip to create it with its
    # params and start attrs, one per epoch report (its heartbeat and pruning read with it),
    # one to finish it (closing attrs and state); a fused group shares each among k trials
    trips = (2 + epochs) / k
    engine.dispose()
    return {"statements": c["statements"] / made, "commits": c["commits"] / made,
            "ms": 1000 * took / made, "rt": rt, "floor": trips * rt, "wt": wt,
            "wfloor": trips * wt}


def floor_rows(paths: list[tuple[str, str, str | None, str | None]], epochs: int, k: int,
               trials: int) -> list[dict[str, float | str]]:
    """One repeat of :func:`floor_once` per storage path and shape (unfused, fused ``k``)."""
    rows: list[dict[str, float | str]] = []
    for label, backend, base, front in paths:
        for shape in (1, k):
            with tempfile.TemporaryDirectory() as tmp, \
                    database(backend, base, Path(tmp)) as url:
                m = floor_once(_front(url, front), Path(tmp), epochs, shape, trials)
            rows.append({"storage": label, "shape": "unfused" if shape == 1 else f"fused {k}",
                         **m})
    return rows


def floor_table(paths: list[tuple[str, str, str | None, str | None]], epochs: int, k: int,
                trials: int, repeats: int, before: str | None) -> None:
    """Statements and ms per trial against the floor, ``repeats`` times (medians, the spread
    of ms in brackets); with ``before`` (a checkout of tuner), the same script on that code
    too, each repeat running both versions one after the other so both see the same load."""
    import json
    import statistics

    versions = ([("before", before)] if before else []) + [("after", None)]
    runs: dict[str, list[list[dict[str, float | str]]]] = {v: [] for v, _ in versions}
    loads = []
    for _ in range(repeats):
        for version, root in versions:
            loads.append(os.getloadavg()[0])
            # the tuner of ``root``, or of the checkout this file is in
            env = {**os.environ, "PYTHONPATH": root or str(Path(__file__).resolve().parents[1])}
            out = subprocess.run(
                [sys.executable, __file__, "--floor-json", json.dumps(paths), str(epochs),
                 str(k), str(trials)], env=env, check=True, capture_output=True, text=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            if not runs[version]:
                print(f"{version}: tuner from {got['tuner']}", flush=True)
            runs[version].append(got["rows"])
    print("\nfloor: the round trips a trial's database work needs at least (one to create it "
          "with its params, one per epoch report, one to finish it; a fused group shares them) "
          "times the median SELECT 1 transaction, and times a one-row write transaction "
          "(which waits for the commit to reach the disk); ms")
    print(f"per trial: {epochs} epochs (report, pruning check, heartbeat each), "
          f"unfused and in fused groups of {k}; {trials} trials a run, {repeats} runs: medians, "
          f"ms spread in brackets; load average {min(loads):.1f}-{max(loads):.1f} during the "
          "runs (a shared machine)\n")
    head = (f"{'storage':<11}{'trial':<9}{'version':<8}{'statements':>11}{'commits':>9}"
            f"{'ms/trial':>20}{'SELECT 1':>9}{'floor':>7}{'ratio':>7}{'write':>7}{'floor':>7}"
            f"{'ratio':>7}")
    print(head)
    print("-" * len(head))
    for i, row in enumerate(runs[versions[-1][0]][0]):
        for version, _ in versions:
            rs = [run[i] for run in runs[version]]
            med = {key: statistics.median(float(r[key]) for r in rs)
                   for key in ("statements", "commits", "ms", "rt", "floor", "wt", "wfloor")}
            spread = f"({min(float(r['ms']) for r in rs):.1f}-{max(float(r['ms']) for r in rs):.1f})"
            print(f"{row['storage']:<11}{row['shape']:<9}{version:<8}{med['statements']:>11.1f}"
                  f"{med['commits']:>9.1f}{med['ms']:>8.1f} {spread:>11}{med['rt']:>9.2f}"
                  f"{med['floor']:>7.1f}{med['ms'] / med['floor']:>7.1f}{med['wt']:>7.2f}"
                  f"{med['wfloor']:>7.1f}{med['ms'] / med['wfloor']:>7.1f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--postgres", default=os.environ.get("TUNER_TEST_POSTGRES_URL"),
                   help="a PostgreSQL URL to create scratch databases on")
    p.add_argument("--kill", action="store_true", help="only the kill -> retry times")
    p.add_argument("--trips", action="store_true", help="only statements and commits per trial")
    p.add_argument("--profile", choices=["sqlite", "postgresql"])
    p.add_argument("--scale", action="store_true",
                   help="only PostgreSQL with K workers, directly and through --pgbouncer")
    p.add_argument("--pgbouncer", default=os.environ.get("TUNER_TEST_PGBOUNCER_URL"),
                   help="a PgBouncer URL (transaction pooling) in front of --postgres")
    p.add_argument("--per-worker", type=int, default=4,
                   help="--scale: trials per worker (at least 100 in all)")
    p.add_argument("--long-trials", type=int, default=2100,
                   help="--scale: trials of the study that measures trial 100 against the end")
    p.add_argument("--keep-free-gib", type=float, default=6.0,
                   help="--scale: run only as many workers as leave this much memory free")
    p.add_argument("--floor", action="store_true",
                   help="only statements and ms per trial against the floor (SQLite, "
                        "--postgres, --pgbouncer)")
    p.add_argument("--epochs", type=int, default=8, help="--floor: epochs per trial")
    p.add_argument("--group", type=int, default=8, help="--floor: trials per fused group")
    p.add_argument("--repeats", type=int, default=3, help="--floor: runs per figure")
    p.add_argument("--compare", metavar="DIR",
                   help="--floor: run the same on the tuner checked out in DIR too (before)")
    p.add_argument("--optuna-worker", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--floor-json", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--light-worker", nargs=7, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.light_worker:
        url, name, index, ready, n, epochs, sleep = a.light_worker
        light_worker(url, name, int(index), ready, int(n), int(epochs), float(sleep))
        return
    if a.floor_json:
        import json

        paths, epochs, k, trials = a.floor_json
        import tuner

        print(json.dumps({"tuner": str(Path(tuner.__file__).parent),
                          "rows": floor_rows(json.loads(paths), int(epochs), int(k), int(trials))}))
        return
    if a.optuna_worker:
        url, name, n, seed, tuner_storage = a.optuna_worker
        optuna_worker(url, name, int(n), int(seed), tuner_storage == "1")
        return
    backends: dict[str, str | None] = {"sqlite": None}
    if a.postgres:
        backends["postgresql"] = a.postgres
    if a.profile:
        with tempfile.TemporaryDirectory() as tmp, \
                database(a.profile, backends.get(a.profile), Path(tmp)) as url:
            profile(url, a.trials, Path(tmp))
        return
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    if a.trips:
        trips_table(backends, a.trials)
        return
    if a.floor:
        paths = [("sqlite", "sqlite", None, None)]
        if a.postgres:
            paths.append(("postgresql", "postgresql", a.postgres, None))
            if a.pgbouncer:
                paths.append(("pgbouncer", "postgresql", a.postgres, a.pgbouncer))
        floor_table(paths, a.epochs, a.group, min(a.trials, 64), a.repeats, a.compare)
        return
    if a.scale:
        if not a.postgres:
            raise SystemExit("--scale needs --postgres URL (or TUNER_TEST_POSTGRES_URL)")
        scale_table(a.postgres, a.pgbouncer, a.workers, a.per_worker, 2, 0.05, a.long_trials,
                    a.keep_free_gib)
        return
    if not a.kill:
        trips_table(backends, a.trials)
        overhead_table(backends, a.trials, a.workers)
    kill_table(backends, [(1, 3), (5, 20)])


if __name__ == "__main__":
    main()
