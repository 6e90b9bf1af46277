"""Warm start: time to a target validation accuracy for ``--from`` a related study, against a
cold start, side by side.

The old study trains the study file's space for ``--old-epochs``; the new one for
``--epochs`` (a different training, so its results cannot carry over and tuner enqueues the
old study's ``--enqueue-top`` best configurations as its first trials). Both new studies
have the same seed and budget; the clock starts when each new study starts (the old study
is paid for already). Run from the repository root:

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/warmstart.py --target 0.97
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common as c
from optuna.trial import TrialState

from tuner import api
from tuner.settings import Settings


def time_to(result: api.Result, target: float, started: float) -> tuple[float | None, int | None]:
    """Seconds from ``started`` (unix time) until a trial of this run first finished at or
    above ``target``, and how many trials of this run had finished by then."""
    own = sorted((t for t in result.study.get_trials(deepcopy=False)
                  if t.state == TrialState.COMPLETE and t.datetime_start is not None
                  and t.datetime_start.timestamp() >= started - 1),
                 key=lambda t: t.datetime_complete)
    for i, t in enumerate(own, 1):
        if t.value is not None and t.value >= target:
            return t.datetime_complete.timestamp() - started, i
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="search_spaces/digits_mlp.yaml")
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--old-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--enqueue-top", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", default=c.DEFAULT_DATA_DIR)
    args = ap.parse_args()
    c.quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 's.db'}"
        opts = {"storage": url, "device": "cpu", "checkpoint_dir": tmp, "data_dir": args.data_dir}
        old = c.bench_spec(args.spec, name="old", epochs=args.old_epochs, trials=args.trials, seed=0)
        api.run(old, **opts)
        for how in ("cold", "warm"):
            new = c.bench_spec(args.spec, name=f"new_{how}", epochs=args.epochs,
                               trials=args.trials, seed=args.seed)
            settings: Settings = api.settings(**opts)
            started = time.time()
            prepared = api.prepare(new, settings, warm_from="old" if how == "warm" else None,
                                   enqueue_top=args.enqueue_top if how == "warm" else None)
            result = api.go(prepared)
            seconds, n = time_to(result, args.target, started)
            best = result.best_value
            rows.append([how, c.fmt_s(seconds), n if n is not None else "-",
                         f"{best:.4f}" if best is not None else "-",
                         f"{time.time() - started:.0f}"])
    print(c.machine("cpu"))
    print(f"{args.spec}: old {args.trials} trials x {args.old_epochs} epochs; new "
          f"{args.trials} trials x {args.epochs} epochs, --enqueue-top {args.enqueue_top}")
    print(c.table(["start", f"s to {args.target}", "trials to it", "best", "run s"], rows))


if __name__ == "__main__":
    main()
