"""The console: a running study's state and its controls in a browser, served by
``tuner dashboard`` on the same port as optuna-dashboard (one WSGI app in front of the
other: ``/console`` is tuner's, everything else optuna-dashboard's).

    /console                      the studies: state, budget, best, workers, time left
    /console/study/NAME           one study: budget bar, workers, running trials and their
                                  curves, ASHA rungs, PBT lineage, fused groups, failures
    /console/api/...              the same as JSON (the pages poll it every second)
    POST /console/api/study/NAME/ACTION   stop, pause, continue, extend, stop-trial, retry

Security, as Jupyter does it: with a ``token``, every request needs it, given once in the URL
(``?token=...``, then kept in a same-site, HTTP-only cookie), and a control (any POST, to
either app) also needs the token in its ``X-Tuner-Token`` header, or for optuna-dashboard's own
writes the cookie, from a page of this server's own origin (the ``Origin`` header), so another
web page in the user's browser cannot post here (CSRF). Requests whose ``Host`` is not this
server's own name are refused (DNS rebinding). ``read_only``: no controls, and none of
optuna-dashboard's writes.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from tuner.errors import TunerError
from tuner.results.console._view import classify, detail, summary
from tuner.results.status import STATE_ATTRS

__all__ = ["Console", "COOKIE"]

COOKIE = "tuner_token"
ACTIONS = ("stop", "pause", "continue", "extend", "stop-trial", "retry")
StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class _Refused(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


class Console:
    """The WSGI app: the console's routes, and ``fallback`` (optuna-dashboard) for the rest.

    ``storage``: the study database (an RDBStorage); ``allowed_hosts``: the ``Host`` values
    accepted (None: any, for a server bound to every interface, where the token guards)."""

    def __init__(self, storage: Any, fallback: Callable[[Environ, StartResponse], Iterable[bytes]],
                 *, token: str | None, read_only: bool = False,
                 allowed_hosts: frozenset[str] | None = None):
        self.storage, self.fallback = storage, fallback
        self.token, self.read_only, self.allowed_hosts = token, read_only, allowed_hosts
        self._page = _asset("page.html").decode()

    # ---- the gate ---------------------------------------------------------------------
    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._route(environ, start_response)
        except _Refused as e:
            return _send(start_response, e.status, "application/json",
                         json.dumps({"error": str(e)}).encode())

    def _check_host(self, environ: Environ) -> None:
        host = environ.get("HTTP_HOST", "")
        if self.allowed_hosts is not None and host.lower() not in self.allowed_hosts:
            raise _Refused("403 Forbidden", f"Host {host!r} is not this server's; open the URL "
                           "that `tuner dashboard` printed")

    def _given_token(self, environ: Environ, *, header_only: bool = False) -> str | None:
        header = environ.get("HTTP_X_TUNER_TOKEN")
        if header or header_only:
            return header
        jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        return jar[COOKIE].value if COOKIE in jar else None

    def _valid(self, given: str | None) -> bool:
        return self.token is None or (given is not None and hmac.compare_digest(
            given.encode(), self.token.encode()))

    def _check_origin(self, environ: Environ) -> None:
        origin = environ.get("HTTP_ORIGIN")
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        if origin is not None and origin.lower() != own.lower():
            raise _Refused("403 Forbidden", f"a request from {origin} is not accepted; use the "
                           "console's own page")

    def _route(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self._check_host(environ)
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "/") or "/"
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if method in ("GET", "HEAD") and "token" in query:
            if not self._valid(query["token"][0]):
                raise _Refused("403 Forbidden", "wrong token; copy the URL that `tuner "
                               "dashboard` printed")
            rest = {k: v for k, v in query.items() if k != "token"}
            target = quote(path) + (f"?{urlencode(rest, doseq=True)}" if rest else "")
            cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            start_response("302 Found", [("Location", target), ("Set-Cookie", cookie),
                                         ("Content-Length", "0")])
            return [b""]
        if not self._valid(self._given_token(environ)):
            raise _Refused("403 Forbidden", "this server needs its token: open the URL with "
                           "?token=... that `tuner dashboard` printed")
        if method not in ("GET", "HEAD"):
            self._check_origin(environ)
            if self.read_only:
                raise _Refused("403 Forbidden", "this console is read-only (--read-only)")
        if path == "/":
            start_response("302 Found", [("Location", "/console"), ("Content-Length", "0")])
            return [b""]
        if path == "/console" or path.startswith("/console/"):
            return self._console(environ, start_response, method, path)
        return self.fallback(environ, start_response)

    # ---- the console's routes -----------------------------------------------------------
    def _console(self, environ: Environ, start_response: StartResponse, method: str,
                 path: str) -> Iterable[bytes]:
        parts = [unquote(p) for p in path.split("/")[2:] if p]
        if method == "POST":
            if len(parts) != 4 or parts[:2] != ["api", "study"]:
                raise _Refused("404 Not Found", "no such control")
            # the header, not the cookie: a cross-site form cannot set it
            if self.token is not None and not self._valid(
                    self._given_token(environ, header_only=True)):
                raise _Refused("403 Forbidden", "a control needs the X-Tuner-Token header")
            return self._control(environ, start_response, parts[2], parts[3])
        if method not in ("GET", "HEAD"):
            raise _Refused("405 Method Not Allowed", "GET or POST only")
        if parts == [] or parts == ["api", "studies"]:
            data = self.studies()
            if parts:
                return _json(start_response, data)
            return self._html(start_response, "Studies", {"view": "studies", "data": data})
        if len(parts) == 2 and parts[0] == "static" and parts[1] in ("console.js",
                                                                      "console.css"):
            kind = "text/javascript" if parts[1].endswith(".js") else "text/css"
            return _send(start_response, "200 OK", f"{kind}; charset=utf-8", _asset(parts[1]))
        if len(parts) == 2 and parts[0] == "study" or len(parts) == 3 and parts[:2] == [
                "api", "study"]:
            data = self.study(parts[-1])
            if data is None:
                raise _Refused("404 Not Found", f"no study named {parts[-1]!r}")
            if parts[0] == "api":
                return _json(start_response, data)
            return self._html(start_response, parts[-1], {"view": "study", "data": data})
        raise _Refused("404 Not Found", "no such page")

    def studies(self) -> list[dict[str, Any]]:
        from tuner.storage import studies_overview

        now = time.time()
        return [summary(r, now) for r in studies_overview(self.storage.engine, classify,
                                                          STATE_ATTRS)]

    def study(self, name: str) -> dict[str, Any] | None:
        from tuner.storage import study_overview

        d = study_overview(self.storage.engine, name, classify=classify, attrs=STATE_ATTRS)
        return None if d is None else detail(d)

    def _html(self, start_response: StartResponse, title: str, state: dict[str, Any]
              ) -> Iterable[bytes]:
        state = {**state, "read_only": self.read_only, "controls": not self.read_only}
        text = json.dumps(state, default=str).replace("</", "<\\/")
        page = (self._page.replace("{{title}}", _escape(title))
                # the page's scripts send the token in a header with each control
                .replace("{{token}}", "" if self.read_only or self.token is None
                         else _escape(self.token))
                .replace("{{state}}", text))
        return _send(start_response, "200 OK", "text/html; charset=utf-8", page.encode(),
                     [("Cache-Control", "no-store")])

    def _control(self, environ: Environ, start_response: StartResponse, name: str,
                 action: str) -> Iterable[bytes]:
        from tuner import study as st
        from tuner.results import controls

        if action not in ACTIONS:
            raise _Refused("404 Not Found", f"no control {action!r}; one of {', '.join(ACTIONS)}")
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(size) or b"{}") if size else {}
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            raise _Refused("400 Bad Request", "the body must be a JSON object") from None
        try:
            handle = st.load(self.storage, name, wait_s=0)
            if action == "stop":
                controls.stop(handle)
            elif action == "pause":
                controls.pause(handle)
            elif action == "continue":
                controls.go_on(handle)
            elif action == "extend":
                minutes = _number(body, "minutes")
                controls.extend(handle, controls.Extension(
                    _integer(body, "trials"), None if minutes is None else minutes * 60,
                    _number(body, "hours")))
            elif action == "stop-trial":
                controls.stop_trial(handle, _required(_integer(body, "trial"), "trial"))
            else:
                controls.retry(handle, _required(_integer(body, "trial"), "trial"))
        except TunerError as e:
            raise _Refused("400 Bad Request", str(e)) from None
        return _json(start_response, {"ok": True, "action": action, "study": name})


def _integer(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TunerError(f"{key} must be a whole number (got {v!r})")
    try:
        return int(v)
    except ValueError:
        raise TunerError(f"{key} must be a whole number (got {v!r})") from None


def _number(body: dict[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise TunerError(f"{key} must be a number (got {v!r})") from None
    if not math.isfinite(x):
        raise TunerError(f"{key} must be a finite number (got {v!r})")
    return x


def _required(v: int | None, key: str) -> int:
    if v is None:
        raise TunerError(f"give {key}")
    return v


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _json(start_response: StartResponse, data: Any) -> Iterable[bytes]:
    return _send(start_response, "200 OK", "application/json",
                 json.dumps(data, default=str).encode(), [("Cache-Control", "no-store")])


def _send(start_response: StartResponse, status: str, kind: str, body: bytes,
          extra: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body))),
                            ("X-Content-Type-Options", "nosniff"),
                            ("X-Frame-Options", "DENY"), *(extra or [])])
    return [body]
