"""CLI commands for after the search: dashboard, report, retrain.

Thin like the rest of the CLI: the work is in :mod:`tuner.results.dashboard`, :mod:`tuner.results.report` and
:mod:`tuner.results.retrain`, imported inside each command so ``tuner --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuner import gate
from tuner.cli._common import (
    DEFAULT_STORAGE,
    DataDir,
    Device,
    Download,
    Quiet,
    Storage,
    _open,
    _setup_logging,
    command,
    out,
    val_test_table,
)
from tuner.settings import DEFAULT_DATA_DIR

Name = Annotated[str, typer.Argument(help="Study name.")]


@command
def dashboard(
    storage: Storage = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(
        help="Address to listen on. Keep 127.0.0.1 and reach it through an SSH tunnel "
             "(ssh -L 8080:127.0.0.1:8080 HOST); another address needs the token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8080,
    token: Annotated[str | None, typer.Option(
        envvar="TUNER_DASHBOARD_TOKEN",
        help="The token every request needs (at least 16 characters) [default: a new random "
             "one, printed in the URL].")] = None,
    no_token: Annotated[bool, typer.Option(
        "--no-token", help="No token (only on a loopback address).")] = False,
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="No controls: watch only.")] = False,
) -> None:
    """Serve tuner's console and optuna-dashboard on one port: each study's state, workers,
    budget and controls (/console), live curves and plots (/dashboard)."""
    from tuner.errors import TunerError
    from tuner.results.dashboard import is_loopback, new_token, open_server
    from tuner.storage import display_url

    if token is not None and no_token:
        raise TunerError("give --token or --no-token, not both")
    if token is not None and len(token) < 16:
        raise TunerError("--token must be at least 16 characters; leave it out for a random one")
    if no_token and not is_loopback(host):
        raise TunerError(f"--no-token is only for a loopback address, not {host}: anyone who "
                         "reaches the port could stop or delete your studies; drop --no-token")
    _setup_logging()
    server = open_server(_open(storage, "existing"), host, port,
                         token=None if no_token else token or new_token(), read_only=read_only)
    out().print(f"console for {display_url(storage)}"
                + (" (read-only)" if read_only else "") + f": {server.console_url}",
                highlight=False, soft_wrap=True)
    out().print(f"optuna-dashboard: {server.url} (Ctrl-C to stop)", highlight=False,
                soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        out().print("dashboard stopped")
    finally:
        server.server_close()


@command
def report(
    name: Name,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Folder for report.html, the PNGs and trials.csv "
                      "[default: runs/NAME/report].")] = None,
    top: Annotated[int, typer.Option(min=1, max=gate.MAX_COUNT,
                                     help="Trials in the top-trials table.")] = 10,
    png: Annotated[bool, typer.Option(
        "--png/--no-png", help="Also save each plot as a PNG (--no-png: the page's "
                               "interactive plots only, several times faster).")] = True,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Write a study's report: an offline HTML page, a PNG per plot, and trials.csv."""
    from tuner import study as st
    from tuner.results.report import build

    _setup_logging()
    handle = st.load(_open(storage), name)
    result = build(handle, out_dir or gate.inside_folder("runs", name) / "report", top=top,
                   png=png)
    out().print(f"report of {name}: {result.html}", highlight=False, soft_wrap=True)
    if png:
        out().print("plots: " + ", ".join(str(p.name) for p in result.pngs), highlight=False)
    for sid, why in result.skipped.items():
        out().print(f"skipped {sid}: {why}", highlight=False, soft_wrap=True)


@command
def retrain(
    name: Name,
    trial: Annotated[int | None, typer.Option(min=0, max=gate.MAX_COUNT,
                                              help="Trial number [default: the best].")
                     ] = None,
    prefer: Annotated[str | None, typer.Option(
        help="With several objectives: the Pareto-front member best at this metric "
             "[default: the first objective].")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Folder for model.pt and model.json [default: runs/NAME/trial-N].")] = None,
    storage: Storage = DEFAULT_STORAGE,
    device: Device = "auto",
    data_dir: DataDir = Path(DEFAULT_DATA_DIR),
    download: Download = True,
    quiet: Quiet = False,
) -> None:
    """Retrain the best trial on train+val, test it once, save its weights and model card.

    The trial (or --trial N) is retrained with its own seed for the epochs it ran, then
    evaluated once on the held-out test set; `tuner best NAME` shows the test score."""
    from tuner import api
    from tuner import study as st
    from tuner.results.retrain import pick_trial
    from tuner.results.retrain import retrain as run_retrain

    _setup_logging()
    settings = api.settings(storage=storage, device=device, data_dir=data_dir, download=download)
    handle = st.load(_open(storage, "existing"), name)
    number = pick_trial(handle, trial, prefer).number
    if not quiet:
        out().print(f"retraining trial {number} of {name} on train+val on {settings.device}")
    r = run_retrain(handle, settings, trial=number, folder=out_dir)
    searched = handle.study.trials[r.trial]
    out().print(f"trial {r.trial} of {name}: {r.epochs} epochs on {r.train_samples} samples "
                f"(train+val), seed {r.seed}; tested once on {r.test_samples} samples",
                highlight=False)
    out().print(val_test_table(dict(zip(handle.spec.objective_names, searched.values or (),
                                        strict=False)), r.metrics))
    saved = [p for p in (r.weights, r.card) if p is not None]
    out().print("saved " + " and ".join(str(p) for p in saved), highlight=False, soft_wrap=True)
    if r.weights is None:
        out().print("no weights: the study's trainer saved no checkpoint with a \"model\" "
                  "state_dict (ctx.save_checkpoint)", highlight=False)
