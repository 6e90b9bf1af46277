"""Screenshots of the dashboard and the report, taken with headless Chromium.

    python scripts/screenshots.py          # runs a demo study on digits first (minutes on a CPU)
    python scripts/screenshots.py --storage sqlite:///tuner.db --study digits_mlp
    python scripts/screenshots.py --out /tmp/tuner-screens

Writes dashboard-home.png, dashboard-study.png, dashboard-trials.png, report-top.png,
report-full.png, and console-studies.png and console-study.png (the console while two
workers run 40 more trials of the study) into --out (default /tmp/tuner-screens), plus the
report itself in report/.
Needs chromium on PATH (Debian: apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = """
name: digits_demo
data: digits
model: mlp
epochs: 10
trials: 12
validation: 0.2
sampler: {name: tpe, n_startup_trials: 6}
pruner: {name: median, n_startup_trials: 4, min_epochs: 3}
space:
  lr:         {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
  width:      {type: int, low: 16, high: 256, log: true}
  depth:      {type: int, low: 1, high: 3}
  activation: [relu, gelu, tanh]
  dropout:    {type: float, low: 0.0, high: 0.4}
  batch_size: 64
"""
WINDOW = "1400,1000"


def tuner(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "tuner", *args], env=env, text=True,
                          capture_output=True)
    if done.returncode != 0:
        sys.exit(f"tuner {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def shoot(browser: str, url: str, png: Path, profile: Path, window: str = WINDOW) -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                    "--virtual-time-budget=10000", "--hide-scrollbars",
                    f"--window-size={window}", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"wrote {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/tuner-screens"))
    ap.add_argument("--storage", help="an existing storage [default: build a demo study]")
    ap.add_argument("--study", default="digits_demo")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found; apt-get install -y chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tuner-screens-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    storage = args.storage
    if storage is None:
        (work / "demo.yaml").write_text(DEMO)
        storage = f"sqlite:///{work / 'demo.db'}"
        print("running the demo study ...")
        tuner("run", str(work / "demo.yaml"), "--storage", storage, "--device", "cpu", "-q",
              env=env)
        tuner("retrain", args.study, "--storage", storage, "--device", "cpu",
              "--out", str(work / "model"), env=env)
    report = args.out / "report"
    tuner("report", args.study, "--storage", storage, "--out", str(report), env=env)
    shoot(browser, (report / "report.html").as_uri(), args.out / "report-top.png", work / "b1")
    shoot(browser, (report / "report.html").as_uri(), args.out / "report-full.png", work / "b2",
          window="1400,4800")
    dash = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--storage", storage,
                             "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    live = None
    try:
        console = dash.stdout.readline().rsplit(" ", 1)[1].strip()  # .../console?token=T
        url = dash.stdout.readline().split(": ", 1)[1].split()[0]  # .../dashboard
        token = console.split("token=", 1)[1]
        req = urllib.request.Request(url.removesuffix("/dashboard") + "/api/studies",
                                     headers={"Cookie": f"tuner_token={token}"})
        with urllib.request.urlopen(req) as r:
            ids = {s["study_name"]: s["study_id"] for s in json.load(r)["study_summaries"]}
        study = f"{url}/studies/{ids[args.study]}"
        shoot(browser, f"{url}?token={token}", args.out / "dashboard-home.png", work / "b3")
        shoot(browser, f"{study}?token={token}", args.out / "dashboard-study.png", work / "b4",
              window="1400,2400")
        shoot(browser, f"{study}/trials?token={token}", args.out / "dashboard-trials.png",
              work / "b5")
        # the console while two workers run more trials of the study
        live = subprocess.Popen([sys.executable, "-m", "tuner", "resume", args.study,
                                 "--storage", storage, "--trials", "40", "--workers", "2",
                                 "--device", "cpu", "-q", "--heartbeat", "1"],
                                stdout=subprocess.DEVNULL, env=env)
        base = console.split("/console", 1)[0]
        _wait_running(base, token, args.study)
        shoot(browser, f"{base}/console/study/{args.study}?token={token}",
              args.out / "console-study.png", work / "b7", window="1400,1300")
        shoot(browser, console, args.out / "console-studies.png", work / "b6", window="1400,400")
    finally:
        if live is not None:
            live.send_signal(signal.SIGINT)
            live.wait(timeout=120)
        dash.send_signal(signal.SIGINT)
        dash.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)


def _wait_running(base: str, token: str, study: str, timeout: float = 300) -> None:
    """Until two trials of ``study`` have run a few epochs (the console has curves to show)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(f"{base}/console/api/study/{study}",
                                     headers={"Cookie": f"tuner_token={token}"})
        with urllib.request.urlopen(req) as r:
            running = json.load(r)["running"]
        if len(running) >= 2 and all(t["epoch"] >= 3 for t in running):
            return
        time.sleep(0.5)
    sys.exit(f"no two trials of {study} ran 3 epochs in {timeout:.0f} s")


if __name__ == "__main__":
    main()
