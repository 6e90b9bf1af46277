"""Screenshots of the dashboard and the report, taken with headless Chromium.

    python scripts/screenshots.py          # runs a demo study on digits first (minutes on a CPU)
    python scripts/screenshots.py --storage sqlite:///tuner.db --study digits_mlp
    python scripts/screenshots.py --out /tmp/tuner-screens

Writes dashboard-home.png, dashboard-study.png, dashboard-trials.png, report-top.png and
report-full.png into --out (default /tmp/tuner-screens), plus the report itself in report/.
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
    try:
        url = dash.stdout.readline().split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url.removesuffix("/dashboard") + "/api/studies") as r:
            ids = {s["study_name"]: s["study_id"] for s in json.load(r)["study_summaries"]}
        study = f"{url}/studies/{ids[args.study]}"
        shoot(browser, url, args.out / "dashboard-home.png", work / "b3")
        shoot(browser, study, args.out / "dashboard-study.png", work / "b4", window="1400,2400")
        shoot(browser, f"{study}/trials", args.out / "dashboard-trials.png", work / "b5")
    finally:
        dash.send_signal(signal.SIGINT)
        dash.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
