"""graceserve: socketserver and http.server servers that stop gracefully.

Why this package exists: the stdlib servers drop in-flight requests, reset
queued connections, hang on idle keep-alive clients and leave stale pidfiles
when asked to stop.  graceserve keeps their API and adds the drain.

Modules, one concern each: ``drain`` (the registry and the wait for zero),
``connection`` (the registry's record), ``accepting`` (the accept loop and the
listener's end), ``stopping`` (the drain sequence), ``server``
(GracefulTCPServer), ``httpserver`` (GracefulHTTPServer, with ``httphandler``
and ``bodyreader``), ``wsgi`` (GracefulWSGIServer, make_server; with
``wsgihandler`` and ``wsgiresponse``), ``httpparse`` (the strict HTTP/1.1
reader, with ``httpframing`` and ``httpbody``), ``settings`` (one frozen
object, every default), ``TCPOptions``/``HTTPOptions``/``WSGIOptions``
(what each server kind is told, once, in its constructor), ``signals``,
``pidfile``, ``config`` (flags and environment), ``target``, ``runner``
(serve()), ``cli``, ``demo`` (the built-in app), ``errors`` (exit codes).
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
