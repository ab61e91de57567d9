"""The settings of a run: one frozen object from flags and environment to the server.

Why this module exists: each default is written once, here (the command line,
``serve()`` and the server classes read it from ``DEFAULTS``), and each setting
reaches the server by name, never dropped on the way.  To add a setting (WSGI
limits, workers, TLS): add a field here, a row to ``config._OPTIONS`` if it has a
flag, and, if a server reads it, a field in that server's options
(``graceserve.core.options`` and its HTTP and WSGI subclasses) and a line in
``graceserve.process.listener.server_options``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["DEFAULTS", "Address", "Settings"]

Address = tuple[str, int] | str
"""(host, port) for TCP, or a filesystem path for a Unix socket."""


LINGER_MAX = 2.0
"""Seconds: the most the HTTP drain's linger ever takes (see ``drain_linger_max``)."""


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, validated.  Immutable; safe to share."""

    target: str | None = None
    """``module:Handler`` to serve; None: the built-in demo app."""
    bind: Address = ("127.0.0.1", 8000)
    """Where to listen (the first listener)."""
    extra_binds: tuple[Address, ...] = ()
    """Further addresses to listen on (``--bind`` given again), served by the same
    server: one connection registry, one drain.  ``binds`` lists them all."""
    grace: float = 8.0
    """Seconds the drain may take, all of it (inside docker stop's 10 s)."""
    pidfile: str | None = None
    """Locked pidfile path, or None."""
    max_connections: int | None = 1024
    """At this many live connections new clients wait in the kernel backlog."""
    idle_timeout: float | None = 60.0
    """HTTP: close a keep-alive connection idle (or a head arriving) this long.
    TCP: the default timeout of ``wait_for_input`` (the server's ``input_timeout``).
    None: never."""
    min_body_rate: int | None = 500
    """HTTP: bytes per second a request body must average over each ``idle_timeout``
    spent waiting for it (the app's own time between reads does not count);
    slower ones are cut.  None: no minimum."""
    drain_delay: float = 0.0
    """Lame-duck seconds between the stop signal and the drain."""
    log_level: str = "info"
    """debug, info, warning or error."""
    threads: int = 64
    """WSGI: pool threads per process (idle keep-alive connections are parked and hold
    none; more are started while all are held with requests waiting); 0: a thread per
    connection."""
    root_path: str = ""
    """WSGI: SCRIPT_NAME, the path the app is mounted at behind a proxy ('' or /path)."""
    limit_request_line: int = 8190
    """WSGI: bytes in a request line (414 beyond)."""
    limit_request_fields: int = 100
    """WSGI: header fields in a request (431 beyond)."""
    limit_request_field_size: int = 8190
    """WSGI: bytes in one header field line (431 beyond)."""
    max_body_size: int | None = None
    """WSGI: bytes of request body (413 beyond); None: no limit."""
    certfile: str | None = None
    """TLS: the server's certificate chain (PEM); None: plain HTTP."""
    keyfile: str | None = None
    """TLS: its private key (PEM); None: the key is in ``certfile``."""
    ca_certs: str | None = None
    """TLS: CA certificates that client certificates are checked against."""
    cert_reqs: str = "none"
    """TLS: client certificates: none, optional or required."""
    access_log: str | None = None
    """Where access log lines go: a path, ``-`` for stderr, None: nowhere."""
    access_log_format: str = "combined"
    """combined (Apache/nginx, plus the duration) or json."""
    log_format: str = "text"
    """graceserve's own log lines: text, or json (one object per line)."""
    forwarded_allow_ips: str = "127.0.0.1,::1"
    """Peers whose X-Forwarded-* and Forwarded headers are trusted (``*``: any)."""

    workers: int = 1
    """Serving processes.  1: this process serves (a supervisor appears only at the
    first HUP); more: a supervisor process runs this many workers."""
    preload: bool = False
    """Import the target in the supervisor before starting workers (fail fast)."""
    worker_timeout: float | None = 30.0
    """Kill (SIGABRT, then SIGKILL) and replace a worker whose serving loop made no
    progress this long; None: never.  Worker processes of ``--workers N`` (N > 1)
    only: one process cannot replace its own stuck serving loop."""
    max_requests: int | None = None
    """Recycle a worker gracefully after this many requests; None: never.  With one
    process, a worker process takes over this process's serving after as many."""
    start_timeout: float = 30.0
    """Seconds a new worker process gets to import the target and say it is ready;
    a reload whose workers are not all ready by then fails (the old generation
    keeps serving), a replacement that is not counts as a failed start."""
    max_requests_jitter: int = 0
    """Add a random 0..J to each worker's ``max_requests`` (they do not all recycle at once)."""

    umask: int = 0o177
    """The umask a ``unix:`` socket is created under: 0o177 gives mode 0600 (only our
    user may connect), 0o007 gives 0770 (our group too: an nginx in it)."""
    chdir: str | None = None
    """An absolute directory to change to before the target is imported; None: stay.
    The command line applies it (``graceserve.process.launch``); ``serve()`` does not."""
    env: tuple[tuple[str, str], ...] = ()
    """(name, value) pairs put into ``os.environ`` before the target is imported (by
    the command line, as ``chdir``)."""
    config: str | None = None
    """The configuration file the settings were read from (absolute), or None."""
    check_config: bool = False
    """Check the settings and import the target, then exit (``--check-config``)."""
    health_path: str | None = None
    """HTTP: a path graceserve answers itself for any app (``/healthz``): 200, then 503
    from the moment a stop begins; None: every path is the app's."""
    user: str | None = None
    """Run as this user (a name or a numeric uid) once the listener is bound and the
    pidfile taken (``graceserve.process.privileges``); None: as whoever started us."""
    group: str | None = None
    """With ``user``: run with this group (a name or a numeric gid) instead of the
    user's own; None: the user's."""
    metrics_bind: tuple[str, int] | None = None
    """Where the main process serves Prometheus metrics (``GET /metrics``) for every
    worker (``graceserve.process.metrics``); None: no metrics endpoint."""
    reload: bool = False
    """Development: reload gracefully, as a HUP does, when a Python file under the
    working directory changes (``graceserve.process.autoreload``; the command line only)."""

    @property
    def binds(self) -> tuple[Address, ...]:
        """Every address to listen on: ``bind``, then ``extra_binds``."""
        return (self.bind, *self.extra_binds)

    @property
    def drain_linger_max(self) -> float:
        """HTTP: the longest an idle or unfinished connection may linger at drain.

        A quarter of the grace, at most 2 s: the linger must leave most of the
        budget to the requests in flight.
        """
        return min(LINGER_MAX, self.grace / 4)

    def but(self, **changes: Any) -> Settings:
        """A copy with ``changes``."""
        return replace(self, **changes)


DEFAULTS = Settings()
"""The defaults, written once."""
