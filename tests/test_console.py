"""The console in a real browser (Playwright driving Debian's Chromium, headless) against
real studies with real worker processes: it shows a live worker within 2 s; stop on the
page ends the study with its running trials checkpointed and the workers exited 0; pause
holds new trials and extend lets the workers go on; a POST without the token, or from
another origin, is refused and changes nothing. Skips when chromium or playwright is
absent (`.ci/run` installs both)."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from optuna.trial import TrialState
from tuner_procs import finished, start_worker, trials, wait_for, write_study
from typer.testing import CliRunner

from tuner.cli import app
from tuner.results.dashboard import open_server
from tuner.storage import Heartbeat, connect, read_controls, study_workers

pytest_plugins = ["servers"]
# one worker runs the module (pytest-xdist): its module-scoped browser is launched once
pytestmark = pytest.mark.xdist_group("test_console")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def serve(url: str, **kwargs: object) -> tuple[object, str]:
    """The console and optuna-dashboard on a free loopback port, in this process."""
    server = open_server(connect(url, Heartbeat(1, 3)), "127.0.0.1", 0, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.base


def create(study: Path, url: str) -> None:
    r = CliRunner().invoke(app, ["run", str(study), "--storage", url, "--workers", "0"])
    assert r.exit_code == 0, r.output


def page_of(browser: object, base: str, path: str = "/console") -> object:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.on("dialog", lambda d: d.accept())  # "Stop study ...?"
    page.goto(f"{base}{path}?token={TOKEN}")
    return page


@pytest.mark.slow
def test_live_worker_pause_and_extend_from_the_page(browser, sqlite_url, tmp_path):
    study = write_study(tmp_path, trials=3, epochs=12, sleep=0.25)
    create(study, sqlite_url)
    server, base = serve(sqlite_url, token=TOKEN)
    engine = connect(sqlite_url).engine
    try:
        page = page_of(browser, base)
        page.wait_for_selector("#studies")
        assert page.text_content('tr[data-study="toy"] td.workers') == "0"
        workers = [start_worker("toy", sqlite_url, tmp_path, f"w{i}") for i in range(2)]
        wait_for("a worker checked in", lambda: study_workers(engine, "toy", 0), 120, every=0.05)
        seen = time.monotonic()
        page.wait_for_function("document.querySelector('tr[data-study=\"toy\"] td.workers')"
                               ".textContent !== '0'", timeout=5000)
        assert time.monotonic() - seen < 2.0  # the page polls every second

        page.click("text=toy")
        page.wait_for_selector("#controls")
        wait_for("two trials past an epoch", lambda: len(
            [t for t in trials(sqlite_url, "toy") if t.state == TrialState.RUNNING
             and t.intermediate_values]) == 2, 120, every=0.2)
        page.wait_for_selector("#running .curve svg polyline")
        page.click("#pause")
        page.wait_for_selector("text=pause: done")
        assert read_controls(engine, "toy").paused
        started = {t.number for t in trials(sqlite_url, "toy")}
        wait_for("the running trials to finish", lambda: len(finished(
            trials(sqlite_url, "toy"))) >= 2, 60)
        page.wait_for_selector(".badge.paused")
        time.sleep(3)  # three heartbeats: a worker ignoring the pause would take trial 3
        assert {t.number for t in trials(sqlite_url, "toy")} == started
        assert all(w.popen.poll() is None for w in workers)  # paused workers stay

        page.fill("#ext-trials", "2")
        page.click("#extend")
        page.wait_for_selector("text=extend: done")
        page.click("#continue")
        page.wait_for_selector("text=continue: done")
        for w in workers:
            assert w.wait(120) == 0, w.output()
        assert len(finished(trials(sqlite_url, "toy"))) == 5
        page.wait_for_selector(".badge.finished", timeout=5000)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
# the page's button on SQLite: the same control on PostgreSQL, written by `tuner stop`, is
# test_controls.py's (each server once: this module runs on one xdist worker, in series)
@pytest.mark.parametrize("any_url", ["sqlite"], indirect=True)
def test_stop_on_the_page_checkpoints_and_workers_exit_0(browser, any_url, tmp_path):
    study = write_study(tmp_path, trials=20, epochs=40, sleep=0.2)
    create(study, any_url)
    server, base = serve(any_url, token=TOKEN)
    try:
        workers = [start_worker("toy", any_url, tmp_path, f"w{i}") for i in range(2)]
        page = page_of(browser, base, "/console/study/toy")
        wait_for("two trials past an epoch", lambda: len(
            [t for t in trials(any_url, "toy") if t.state == TrialState.RUNNING
             and t.intermediate_values]) == 2, 120, every=0.2)
        page.wait_for_selector(".badge.running")
        before = {t.number for t in trials(any_url, "toy")}
        page.click("#stop")
        page.wait_for_selector("text=stop: done")
        for w in workers:
            assert w.wait(30) == 0, w.output()
        ts = trials(any_url, "toy")
        stopped = [t for t in ts if t.state == TrialState.FAIL]
        assert len(stopped) == 2 and {t.number for t in stopped} <= before
        waiting = [t for t in ts if t.state == TrialState.WAITING]
        assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(
            t.number for t in stopped)  # each resumes from its checkpoint
        page.wait_for_selector(".badge.stopped", timeout=5000)
        assert "stopped by the user" in page.text_content("h1")
    finally:
        server.shutdown()
        server.server_close()


class _Attacker(BaseHTTPRequestHandler):
    """Another site the user has open: its page posts to the console."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"""<html><body>
          <form id="f" method="post" action="{self.target}/console/api/study/toy/stop">
            <input name="x" value="1"></form>
          <script>
            fetch("{self.target}/console/api/study/toy/pause", {{method: "POST",
              credentials: "include", mode: "no-cors", body: "{{}}"}}).finally(() =>
              document.getElementById("f").submit());
          </script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _post(url: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_posts_without_the_token_or_from_another_origin_change_nothing(browser, sqlite_url,
                                                                       tmp_path):
    create(write_study(tmp_path), sqlite_url)
    server, base = serve(sqlite_url, token=TOKEN)
    engine = connect(sqlite_url).engine
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    _Attacker.target = base
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        page = page_of(browser, base)  # the user is logged in: the cookie is set
        page.wait_for_selector("#studies")
        evil = page.context.new_page()
        evil.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        evil.wait_for_load_state("networkidle")
        stop = f"{base}/console/api/study/toy/stop"
        own = {"Origin": base, "Content-Type": "application/json"}
        assert _post(stop, own) == 403  # no token
        assert _post(stop, {**own, "Cookie": f"tuner_token={TOKEN}"}) == 403  # cookie alone
        assert _post(stop, {**own, "X-Tuner-Token": "wrong" * 5}) == 403
        assert _post(stop, {"Origin": "http://evil.example", "X-Tuner-Token": TOKEN}) == 403
        assert _post(stop, {"Host": "evil.example", "X-Tuner-Token": TOKEN}) == 403
        # optuna-dashboard's own writes are guarded too
        assert _post(f"{base}/api/studies/1/note", {"Origin": "http://evil.example",
                                                    "Cookie": f"tuner_token={TOKEN}"}) == 403
        c = read_controls(engine, "toy")
        assert not c.paused and c.stop is None
        assert len(trials(sqlite_url, "toy")) == 0
        assert _post(f"{base}/console/api/study/toy/pause", {**own, "X-Tuner-Token": TOKEN}
                     ) == 200  # the same request, rightly made, works
        assert read_controls(engine, "toy").paused
    finally:
        attacker.shutdown()
        server.shutdown()
        server.server_close()


def test_read_only_serves_no_controls(browser, sqlite_url, tmp_path):
    create(write_study(tmp_path), sqlite_url)
    server, base = serve(sqlite_url, token=TOKEN, read_only=True)
    try:
        page = page_of(browser, base, "/console/study/toy")
        page.wait_for_selector("text=Read-only console")
        assert page.query_selector("#stop") is None
        assert 'content=""' in page.content().split("tuner-token")[1][:20]  # no token given out
        assert _post(f"{base}/console/api/study/toy/stop", {
            "Origin": base, "X-Tuner-Token": TOKEN}) == 403
        assert read_controls(connect(sqlite_url).engine, "toy").stop is None
    finally:
        server.shutdown()
        server.server_close()


def test_every_request_needs_the_token(sqlite_url, tmp_path):
    create(write_study(tmp_path), sqlite_url)
    server, base = serve(sqlite_url, token=TOKEN)
    try:
        for path in ("/console", "/console/api/studies", "/dashboard", "/api/studies"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + path, timeout=10)
            assert e.value.code == 403
        req = urllib.request.Request(base + "/console/api/studies",
                                     headers={"Cookie": f"tuner_token={TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert [s["name"] for s in json.loads(r.read())] == ["toy"]
    finally:
        server.shutdown()
        server.server_close()


def test_another_address_without_a_token_is_refused_in_one_line(sqlite_url):
    r = CliRunner().invoke(app, ["dashboard", "--storage", sqlite_url, "--host", "0.0.0.0",
                                 "--no-token"])
    assert r.exit_code == 2
    assert "--no-token" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = CliRunner().invoke(app, ["dashboard", "--storage", sqlite_url, "--token", "short"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
