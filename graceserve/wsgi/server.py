"""GracefulWSGIServer: any WSGI application (Flask, Django, ...) with graceserve's drain.

Why this module exists: the Python web apps people deploy are WSGI apps, and
the servers they run them on break connections at every stop.  This server
is a ``GracefulHTTPServer`` (so it inherits the backlog sweep, the reaper,
the linger and the race guard) whose connections are served by graceserve's
own request loop (``wsgihandler``) instead of ``BaseHTTPRequestHandler``.

    server = make_server("127.0.0.1", 8000, app)      # like wsgiref.simple_server
    server.serve_forever()                            # ... server.drain(8.0)

The application gets ``environ["graceserve.stopping"]``: a zero-argument
callable that turns True the moment a stop begins (lame duck or drain), so a
streaming response can end itself politely before the grace runs out.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import time
from typing import Any

from graceserve._version import __version__
from graceserve.core.options import TCPOptions
from graceserve.core.parking import ConnectionPool
from graceserve.http.server import GracefulHTTPServer
from graceserve.settings import DEFAULTS
from graceserve.wsgi.handler import WSGIApplication, WSGIConnection, make_base_environ
from graceserve.wsgi.options import DEFAULT_THREADS, WSGIOptions
from graceserve.wsgi.pooled import WSGISession

__all__ = ["GracefulWSGIServer", "WSGIApplication", "make_server"]

log = logging.getLogger("graceserve")

_MAX_THREADS = 1024  # the pool's bound while stuck, without --max-connections


class _NoHandler(socketserver.BaseRequestHandler):
    """Placeholder RequestHandlerClass: connections are served by WSGIConnection."""


class GracefulWSGIServer(GracefulHTTPServer):
    """A ``GracefulHTTPServer`` that serves a WSGI application.

    ``GracefulWSGIServer(server_address, app, bind_and_activate=True, *,
    options=None)``: the application takes the place of the handler class.
    ``set_app`` and ``get_app`` work as on ``wsgiref.simple_server.WSGIServer``.

    Options: ``graceserve.wsgi.options.WSGIOptions`` (HTTPOptions and the two
    below), applied once in the constructor, with GracefulHTTPServer's
    compatibility rule: without ``options=``, the class attributes of the same
    names; an explicit ``options=`` wins.

    Class variables (in addition to GracefulHTTPServer's):

    - root_path = ''                  (option) SCRIPT_NAME; stripped from paths that
                                      start with it
    - server_software                 the ``Server`` header and SERVER_SOFTWARE
    - multiprocess = False            (option) ``wsgi.multiprocess``: True when other
                                      processes serve the same app at the same time
                                      (the runner gives it for ``--workers N``, N > 1)
    - threads = 64                    (option) pool threads: an idle keep-alive
                                      connection is parked in one selector, not held
                                      by a thread (``graceserve.wsgi.pooled``); while
                                      all are held for over a second with requests
                                      waiting, more are started (up to
                                      ``max_connections``); None: a thread per
                                      connection (also without ``select.epoll``)

    Threading contract: as GracefulHTTPServer; the application is called from
    several threads concurrently (``wsgi.multithread`` is True).
    """

    root_path = DEFAULTS.root_path
    server_software = f"graceserve/{__version__}"
    multiprocess = False
    threads: int | None = DEFAULT_THREADS
    options_class: type[WSGIOptions] = WSGIOptions
    options: WSGIOptions

    def __init__(
        self,
        server_address: Any,
        app: WSGIApplication = None,
        bind_and_activate: bool = True,
        *,
        options: WSGIOptions | None = None,
    ) -> None:
        self.application: WSGIApplication = app
        self.base_environ: dict[str, Any] = {}
        self._listener_environs: dict[Any, dict[str, Any]] = {}  # see base_environ_for
        self._pool: ConnectionPool | None = None  # (server_close may run inside __init__)
        super().__init__(server_address, _NoHandler, bind_and_activate, options=options)
        threads = self.threads
        if threads is not None and ConnectionPool.available():
            # Made once, with the options; its threads start with serve_forever.
            self._pool = ConnectionPool(
                threads,
                "graceserve-pool",
                thread_setup=self.mark_handler_thread,
                max_threads=self.max_connections or _MAX_THREADS,
            )

    def apply_options(self, options: TCPOptions) -> None:
        """Put ``options`` in force (as GracefulHTTPServer), ``root_path`` normalised."""
        super().apply_options(options)
        root = self.root_path.rstrip("/")
        if root and not root.startswith("/"):
            root = "/" + root
        self.root_path = root

    def server_bound(self) -> None:
        """Compute the environ keys shared by every request (they name the address)."""
        super().server_bound()
        self.setup_environ()

    def setup_environ(self) -> None:
        """(Re)compute ``base_environ`` from the options and the address.

        Called once the server is bound (or made ``from_socket``); call again
        after changing ``root_path`` or ``multiprocess``.
        """
        self.base_environ = make_base_environ(self)
        first, *more = self.server_addresses
        self._listener_environs = {_local_key(first): self.base_environ} if more else {}
        for address in more:  # add_listener's: their own name and port
            environ = dict(self.base_environ)
            environ["SERVER_NAME"], environ["SERVER_PORT"] = _name_and_port(address)
            self._listener_environs.setdefault(_local_key(address), environ)

    def add_listener(self, sock: socket.socket) -> None:
        """Accept on ``sock`` too (as GracefulTCPServer); requests that arrive on it see
        its own ``SERVER_NAME`` and ``SERVER_PORT``."""
        super().add_listener(sock)
        self.setup_environ()

    def base_environ_for(self, request: Any) -> dict[str, Any]:
        """The shared environ keys for a connection: ``base_environ``, with the name and
        port of the listener that accepted ``request`` when there are several (one
        ``getsockname`` per connection then, none otherwise).  Any thread."""
        environs = self._listener_environs
        if not environs:
            return self.base_environ
        try:
            key = _local_key(request.getsockname())
        except OSError:
            return self.base_environ
        return environs.get(key, self.base_environ)

    def set_app(self, application: WSGIApplication) -> None:
        """Set the WSGI application to serve (as wsgiref's WSGIServer)."""
        self.application = application

    def get_app(self) -> WSGIApplication:
        """The WSGI application being served."""
        return self.application

    def serve_connection(self, request: Any, client_address: Any) -> None:
        """Serve the connection's requests with graceserve's WSGI request loop."""
        WSGIConnection(self, request, client_address).run()

    # -- the pool (``threads``) ------------------------------------------------

    @property
    def pool(self) -> ConnectionPool | None:
        """The pool serving the connections (None without ``threads``, or without
        ``select.epoll``, or once closed)."""
        return self._pool

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start the pool's threads, then accept (as GracefulTCPServer).

        Not at the first client: starting ``threads`` threads there would hold up the
        accept loop for a burst's first clients (and a worker's peers would take them)."""
        pool = self._pool
        if pool is not None and not self.draining:
            try:
                pool.start()
            except RuntimeError as exc:  # no thread can start now: the first client retries
                log.error("cannot start the pool's threads yet (%s); serving on", exc)
        super().serve_forever(poll_interval)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Register the connection and park it in the pool (with ``threads``); else as
        GracefulTCPServer (a thread for it).  May be extended."""
        pool = self._pool
        if pool is None:
            super().process_request(request, client_address)
            return
        self.registry.add(request, self.make_connection(request, client_address))
        try:
            pool.park(WSGISession(self, request, client_address))
        except BaseException:
            self.registry.discard(request)
            raise

    def service_actions(self) -> None:
        """The reaper (as GracefulHTTPServer), then: a pool whose threads are all stuck in
        sessions (clients trickling their requests) gets threads for the input waiting."""
        super().service_actions()
        pool = self._pool
        if pool is not None:
            pool.unstick(time.monotonic())

    def pool_forget(self, session: WSGISession) -> None:
        """Stop watching a session that ends (before its socket closes).  Any thread."""
        pool = self._pool
        if pool is not None:
            pool.forget(session)

    def server_close(self) -> None:
        """Drain and close (as GracefulHTTPServer), then stop the pool's threads."""
        super().server_close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def make_server(
    host: str,
    port: int,
    app: WSGIApplication,
    server_class: type[GracefulWSGIServer] = GracefulWSGIServer,
    *,
    options: WSGIOptions | None = None,
) -> GracefulWSGIServer:
    """A bound, listening GracefulWSGIServer for ``app``, as ``wsgiref``'s make_server.

    ``options``: as for the constructor (None: the server class's attributes).
    """
    return server_class((host, port), app, options=options)


def _local_key(address: Any) -> Any:
    """What a listener and the connections it accepted have in common: the port (TCP;
    a wildcard listener's connections have a concrete local address), or the path."""
    return address[1] if isinstance(address, tuple) else address


def _name_and_port(address: Any) -> tuple[str, str]:
    """``SERVER_NAME`` and ``SERVER_PORT`` for a listener, as http.server names the
    first one (a Unix socket: ``localhost`` and 0)."""
    if isinstance(address, tuple):
        return socket.getfqdn(str(address[0])), str(address[1])
    return "localhost", "0"
