"""The start-up banner: which graceserve serves what, where, with how many workers.

Why this module exists: the first thing to check when a deployment behaves
oddly is what is actually running (version, Python, target, address, worker
count), and it belongs in one line at the top of the log, as every peer prints
it.  It is a separate line from the readiness line (``graceserve.process.readiness``),
whose format is a contract that scripts and tests parse: the banner never
contains ``listening on``, so no reader mistakes one for the other::

    graceserve 0.1.0 (Python 3.11.7): serving hello:app (a WSGI app)
        at 127.0.0.1:8000, 1 worker (pid 4242)
    graceserve 0.1.0 (Python 3.11.7): serving hello:app
        at 0.0.0.0:8000, 4 workers (supervisor pid 4242)
    graceserve 0.1.0 (Python 3.11.7): serving hello:app
        at 127.0.0.1:8000 and unix:/run/app.sock, 1 worker (pid 4242)

(each one line)

The words are written here too, so no line says "1 workers": ``count_of``.
Pure functions apart from ``log_banner``'s one log call: thread-safe.
"""

from __future__ import annotations

import logging
import os
import platform
from typing import Any

from graceserve._version import __version__
from graceserve.core.server import GracefulTCPServer, format_address
from graceserve.http.server import GracefulHTTPServer
from graceserve.process.target import is_handler, is_http_handler, is_wsgi_app
from graceserve.settings import Settings
from graceserve.wsgi.server import GracefulWSGIServer

__all__ = ["banner_line", "count_of", "describe_target", "log_banner"]

log = logging.getLogger("graceserve")


def count_of(number: int, noun: str) -> str:
    """``1 worker``, ``2 workers``: a count with its noun, singular or plural."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def describe_target(target: str | None, served: Any = None) -> str:
    """``hello:app (a WSGI app)``, ``app:Handler (an HTTP handler)``, ``the demo app``.

    ``served`` says what the target turned out to be: the server serving it, or
    the loaded target; None or a string (a supervisor without ``--preload``
    never imports it) gives only its name.
    """
    if target is None:
        return "the demo app"
    kind = _kind(served)
    return f"{target} ({kind})" if kind else target


def _kind(served: Any) -> str:
    if isinstance(served, GracefulTCPServer):
        if isinstance(served, GracefulWSGIServer):
            return "a WSGI app"
        return "an HTTP handler" if isinstance(served, GracefulHTTPServer) else "a TCP handler"
    if served is None or isinstance(served, str):
        return ""
    if is_http_handler(served):
        return "an HTTP handler"
    if is_handler(served):
        return "a TCP handler"
    return "a WSGI app" if is_wsgi_app(served) else ""


def banner_line(
    settings: Settings, server: GracefulTCPServer, loaded: Any = None, supervisor: bool = False
) -> str:
    """The banner for a run of ``settings`` on ``server`` (bound), serving ``loaded``.

    ``loaded``: what the target turned out to be, when ``server`` does not say
    (a supervisor binds with a placeholder handler); None: ``server`` says.
    """
    what = describe_target(settings.target, server if loaded is None else loaded)
    pid = f"supervisor pid {os.getpid()}" if supervisor else f"pid {os.getpid()}"
    return (
        f"graceserve {__version__} (Python {platform.python_version()}): serving {what} "
        f"at {_addresses(server)}, {count_of(settings.workers, 'worker')} ({pid})"
    )


def _addresses(server: GracefulTCPServer) -> str:
    """``A``, ``A and B``, ``A, B and C``: every address the server listens on."""
    *most, last = [format_address(address) for address in server.server_addresses]
    return f"{', '.join(most)} and {last}" if most else last


def log_banner(
    settings: Settings, server: GracefulTCPServer, loaded: Any = None, supervisor: bool = False
) -> None:
    """Log the banner at INFO (event ``banner``).  Call once, as the process starts serving.

    Main thread (it reads the server's address).
    """
    log.info(
        "%s", banner_line(settings, server, loaded, supervisor),
        extra={"event": "banner", "version": __version__, "target": settings.target,
               "address": format_address(server.server_address),
               "addresses": [format_address(where) for where in server.server_addresses],
               "workers": settings.workers},
    )  # fmt: skip
