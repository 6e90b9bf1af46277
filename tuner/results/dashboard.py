"""optuna-dashboard and tuner's console (:mod:`tuner.results.console`) on one port: live curves,
trials and their user attrs, and each running study's state and controls, in a browser.

optuna-dashboard has no authentication and can delete studies, so the server binds to the
loopback interface unless told otherwise, and the console in front of it asks every request
for a token (``token``), checks ``Host`` and, for writes, ``Origin``.

    server = open_server(storage, "127.0.0.1", 8080, token=new_token())  # binds now
    print(server.console_url)                           # with ?token=..., as Jupyter does
    server.serve_forever()                              # until Ctrl-C
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from tuner.errors import TunerError

if TYPE_CHECKING:
    import optuna

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class DashboardServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, a thread per request (the page fetches several APIs at once)."""

    daemon_threads = True  # Ctrl-C does not wait for a browser's open connection
    token: str | None = None

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}"

    @property
    def url(self) -> str:
        return f"{self.base}/dashboard"

    @property
    def console_url(self) -> str:
        """The console's address, with the token a browser needs once."""
        return f"{self.base}/console" + (f"?token={self.token}" if self.token else "")


class _DashboardServer6(DashboardServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        pass  # no line per request on the terminal


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1).
    ``0.0.0.0``, ``::`` and a LAN address are not."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def open_server(storage: optuna.storages.BaseStorage, host: str = DEFAULT_HOST,
                port: int = DEFAULT_PORT, *, token: str | None = None,
                read_only: bool = False) -> DashboardServer:
    """Bind optuna-dashboard and the console for ``storage`` to ``host:port`` (port 0 picks a
    free one); call ``serve_forever()`` on the result, and ``server_close()`` when done.
    ``token``: what every request must carry (None: none, only on a loopback address);
    ``read_only``: no controls, and none of optuna-dashboard's writes."""
    import optuna_dashboard

    from tuner.results.console import Console

    if token is None and not is_loopback(host):
        raise TunerError(f"serving on {host} needs a token (anyone who reaches the port could "
                         "stop or delete your studies); drop --no-token, or use --host 127.0.0.1")
    cls = _DashboardServer6 if _is_ipv6(host) else DashboardServer
    try:
        server = cls((host, port), _QuietHandler)
    except OSError as e:
        raise _bind_error(e, host, port) from None
    server.token = token
    bound = server.server_address[1]
    server.set_app(Console(storage, optuna_dashboard.wsgi(storage), token=token,
                           read_only=read_only,
                           allowed_hosts=_own_names(host, bound) if is_loopback(host) else None))
    return server


def _own_names(host: str, port: int) -> frozenset[str]:
    """The Host headers a browser sends to this loopback server (anything else is another
    site's name resolving here: DNS rebinding)."""
    names = {host, "localhost", "127.0.0.1", "[::1]", f"[{host}]"}
    return frozenset(f"{n}:{port}".lower() for n in names) | (
        frozenset(n.lower() for n in names) if port == 80 else frozenset())


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _bind_error(e: OSError, host: str, port: int) -> TunerError:
    if e.errno == errno.EADDRINUSE:
        return TunerError(f"port {port} on {host} is in use (another dashboard?); "
                          "pick another with --port, or --port 0 for any free one")
    if e.errno in (errno.EACCES, errno.EPERM):
        return TunerError(f"no permission to listen on port {port}; use a port above 1023")
    if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
        return TunerError(f"{host} is not an address of this machine; use --host 127.0.0.1 "
                          "(or 0.0.0.0 for every interface)")
    return TunerError(f"cannot listen on {host}:{port}: {e.strerror or e}; "
                      "try another --host or --port")
