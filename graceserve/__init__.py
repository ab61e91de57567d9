"""graceserve: socketserver and http.server servers that stop gracefully.

Why this package exists: the stdlib servers drop in-flight requests, reset
queued connections, hang on idle keep-alive clients and leave stale pidfiles
when asked to stop.  graceserve keeps their API and adds the drain.

Layers, each importing only from those before it (``tests/test_layering.py``):
``core`` (the registry and its Condition, the accept loop, GracefulTCPServer,
the drain sequence, server hooks, TCPOptions; no HTTP), ``http`` (the strict
parser, the one request cycle, the stdlib handler's dispatcher,
GracefulHTTPServer and HTTPOptions, TLS, proxy trust, the access log),
``wsgi`` (GracefulWSGIServer, make_server, WSGIOptions), ``process`` (serve():
signals, pidfile, the supervisor as a state machine, workers, the control
socket and ctl, systemd, --reload); at the top, the command line (``cli``,
``config``, ``configfile``, ``checkconfig``), ``settings`` (one frozen object,
every default), ``errors`` (exit codes), ``logformat`` and ``demo``.
"""

from graceserve._version import __version__
from graceserve.core.drain import DrainController, DrainReport
from graceserve.core.options import TCPOptions
from graceserve.core.server import GracefulTCPServer
from graceserve.errors import (
    EXIT_CANNOT_START,
    EXIT_CUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    StartupError,
    UsageError,
)
from graceserve.http.options import HTTPOptions
from graceserve.http.server import DrainAwareRequestHandler, GracefulHTTPServer
from graceserve.process.runner import serve
from graceserve.wsgi.options import WSGIOptions
from graceserve.wsgi.server import GracefulWSGIServer, make_server

__all__ = [
    "EXIT_CANNOT_START",
    "EXIT_CUT",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "DrainAwareRequestHandler",
    "DrainController",
    "DrainReport",
    "GracefulHTTPServer",
    "GracefulTCPServer",
    "GracefulWSGIServer",
    "HTTPOptions",
    "StartupError",
    "TCPOptions",
    "UsageError",
    "WSGIOptions",
    "__version__",
    "make_server",
    "serve",
]
