"""optuna-dashboard on a study storage: live curves, trials and their user attrs in a browser.

The dashboard has no authentication and can delete studies, so it binds to the loopback
interface unless told otherwise; :func:`is_loopback` lets the CLI warn when it is not.

    server = open_server(storage, "127.0.0.1", 8080)   # binds now: port errors come early
    server.serve_forever()                              # until Ctrl-C
"""

from __future__ import annotations

import errno
import ipaddress
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

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/dashboard"


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


def open_server(storage: optuna.storages.BaseStorage, host: str = DEFAULT_HOST,
                port: int = DEFAULT_PORT) -> DashboardServer:
    """Bind the dashboard for ``storage`` to ``host:port`` (port 0 picks a free one); call
    ``serve_forever()`` on the result, and ``server_close()`` when done."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    cls = _DashboardServer6 if _is_ipv6(host) else DashboardServer
    try:
        server = cls((host, port), _QuietHandler)
    except OSError as e:
        raise _bind_error(e, host, port) from None
    server.set_app(app)
    return server


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
