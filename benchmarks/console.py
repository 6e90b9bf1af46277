"""How fast the console loads a big study: its studies list and a study's page, for a study of
10,000 trials (each with a 20-epoch learning curve and the attrs tuner keeps), on SQLite
and PostgreSQL.

    .venv/bin/python benchmarks/console.py                  # SQLite; PostgreSQL too if
                                                            # $TUNER_TEST_POSTGRES_URL is set
    .venv/bin/python benchmarks/console.py --trials 2000 --repeat 9

For each database: the time to build the study (not measured), then the medians over
``--repeat`` requests, through the real server (``tuner.results.dashboard.open_server`` on a free
loopback port): the studies page (HTML with its data), the studies JSON the page polls every
second, a study's page and its JSON; and, if Chromium and Playwright are installed, a real
browser's page load until the table is drawn. The target is under 1 s each.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner import study as st  # noqa: E402
from tuner.config import parse_spec  # noqa: E402
from tuner.results.dashboard import open_server  # noqa: E402
from tuner.storage import Heartbeat, connect  # noqa: E402

TOKEN = "benchmark-token-0123456789"
SPEC = {"name": "big", "data": "digits", "model": "mlp", "epochs": 20, "trials": 10_000,
        "pruner": {"name": "asha", "min_epochs": 2, "reduction_factor": 3},
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                  "width": {"type": "int", "low": 16, "high": 256}}}


def build(url: str, n: int) -> None:
    """A study of ``n`` finished trials (complete, pruned, paused at a rung, failed) and two
    running ones, with the rows tuner writes. The study is made by tuner; its trials are
    inserted in bulk into Optuna's tables (one add_trial each would take minutes)."""
    import json

    from optuna.storages._rdb import models
    from sqlalchemy import text as sa_text

    storage = connect(url, Heartbeat(5, 20))
    handle = st.create_or_resume(storage, parse_spec(SPEC))
    st.add_budget(handle, n + 2, None)
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "width": IntDistribution(16, 256)}
    sid = handle.study._study_id
    rng = __import__("random").Random(0)
    now = __import__("datetime").datetime.now()
    trials, params, values, curves, attrs = [], [], [], [], []
    for i in range(n):
        tid = i + 1
        kind = i % 10
        epochs = 20 if kind < 5 else (2 if kind < 8 else 6)
        state = (TrialState.COMPLETE if kind < 5 else
                 TrialState.FAIL if kind == 9 else TrialState.PRUNED)
        trials.append({"trial_id": tid, "number": i, "study_id": sid, "state": state.name,
                       "datetime_start": now, "datetime_complete": now})
        for name, dist, v in (("lr", dists["lr"], 10 ** rng.uniform(-4, -1)),
                              ("width", dists["width"], rng.randint(16, 256))):
            params.append({"trial_id": tid, "param_name": name, "param_value": float(v),
                           "distribution_json": optuna.distributions.distribution_to_json(dist)})
        curve = {e: 0.5 + 0.4 * (1 - 1 / e) + rng.random() * 0.01 for e in range(1, epochs + 1)}
        curves += [{"trial_id": tid, "step": e, "intermediate_value": v,
                    "intermediate_value_type": "FINITE"} for e, v in curve.items()]
        if state == TrialState.COMPLETE:
            values.append({"trial_id": tid, "objective": 0, "value": curve[epochs],
                           "value_type": "FINITE"})
        a = {"worker": {"host": "node1", "pid": 1000 + i % 8, "device": "cuda:0"},
             "lineage": i, "epochs_run": epochs, "wall_time_s": 12.5, "seed": i,
             "train_loss": 0.1, "tuner_state": state.name.lower()}
        if kind in (5, 6):
            a["paused_at"] = 2
        if kind == 9:
            a["fail_reason"] = "CUDA out of memory"
        attrs += [{"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in a.items()]
    with storage.engine.begin() as conn:
        for model, rows in ((models.TrialModel, trials), (models.TrialParamModel, params),
                            (models.TrialValueModel, values),
                            (models.TrialIntermediateValueModel, curves),
                            (models.TrialUserAttributeModel, attrs)):
            for k in range(0, len(rows), 5000):
                conn.execute(model.__table__.insert(), rows[k:k + 5000])
        if storage.engine.name == "postgresql":  # the ids were given: move the sequence on
            conn.execute(sa_text("SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), "
                                 "(SELECT max(trial_id) FROM trials))"))
    study = optuna.load_study(study_name="big", storage=storage)
    for _ in range(2):
        t = study.ask(dists)
        for e in range(1, 4):
            t.report(0.6 + e / 100, e)


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def get(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"Cookie": f"tuner_token={TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def browser_load(base: str, path: str, selector: str, repeat: int) -> float | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path("/usr/bin/chromium").exists():
        return None
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                              args=["--no-sandbox"])
        page = b.new_page()
        page.goto(f"{base}{path}?token={TOKEN}")  # sets the cookie
        page.wait_for_selector(selector)

        def load() -> None:
            page.goto(f"{base}{path}")
            page.wait_for_selector(selector)

        result = median_s(load, repeat)
        b.close()
    return result


def measure(name: str, url: str, n: int, repeat: int) -> None:
    t0 = time.perf_counter()
    build(url, n)
    print(f"{name}: built a study of {n} trials in {time.perf_counter() - t0:.0f} s", flush=True)
    server = open_server(connect(url), "127.0.0.1", 0, token=TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = server.base
    try:
        rows = {
            "studies page (HTML)": lambda: get(f"{base}/console"),
            "studies JSON (each poll)": lambda: get(f"{base}/console/api/studies"),
            "study page (HTML)": lambda: get(f"{base}/console/study/big"),
            "study JSON (each poll)": lambda: get(f"{base}/console/api/study/big"),
        }
        for label, fn in rows.items():
            fn()  # warm
            print(f"  {label:<28} {median_s(fn, repeat) * 1000:7.0f} ms", flush=True)
        for label, path, sel in (("studies page in Chromium", "/console", "#studies"),
                                 ("study page in Chromium", "/console/study/big", "#failures")):
            s = browser_load(base, path, sel, repeat)
            print(f"  {label:<28} " + ("   (no chromium)" if s is None
                                         else f"{s * 1000:7.0f} ms"), flush=True)
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(experimental|Heartbeat of storage).*")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--postgres", default=os.environ.get("TUNER_TEST_POSTGRES_URL"))
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = ap.parse_args()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"medians of {args.repeat}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_sqlite:
            measure("SQLite", f"sqlite:///{tmp}/big.db", args.trials, args.repeat)
    if args.postgres:
        from sqlalchemy import create_engine, text

        db = f"tuner_console_bench_{os.getpid()}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {db}"))
        try:
            measure("PostgreSQL", args.postgres.rsplit("/", 1)[0] + f"/{db}", args.trials,
                    args.repeat)
        finally:
            with admin.connect() as c:
                c.execute(text(f"DROP DATABASE {db} WITH (FORCE)"))


if __name__ == "__main__":
    main()
