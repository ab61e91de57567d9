"""The settings of a run: one frozen object from flags and environment to the server.

Why this module exists: each default is written once, here (the command line,
``serve()`` and the server classes read it from ``DEFAULTS``), and each setting
reaches the server by name, never dropped on the way.  To add a setting (WSGI
limits, workers, TLS): add a field here, a row to ``config._OPTIONS`` if it has a
flag, and, if the server reads it, an entry in ``server_attributes``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["DEFAULTS", "Address", "Settings"]

Address = tuple[str, int] | str
"""(host, port) for TCP, or a filesystem path for a Unix socket."""


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, validated.  Immutable; safe to share."""

    target: str | None = None
    """``module:Handler`` to serve; None: the built-in demo app."""
    bind: Address = ("127.0.0.1", 8000)
    """Where to listen."""
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
    drain_delay: float = 0.0
    """Lame-duck seconds between the stop signal and the drain."""
    log_level: str = "info"
    """debug, info, warning or error."""
    workers: int = 1
    """Serving processes.  1: this process serves (a supervisor appears only at the
    first HUP); more: a supervisor process runs this many workers."""
    preload: bool = False
    """Import the target in the supervisor before starting workers (fail fast)."""
    worker_timeout: float | None = 30.0
    """Kill (SIGABRT, then SIGKILL) and replace a worker whose serving loop made no
    progress this long; None: never."""
    max_requests: int | None = None
    """Recycle a worker gracefully after this many requests; None: never."""
    max_requests_jitter: int = 0
    """Add a random 0..J to each worker's ``max_requests`` (they do not all recycle at once)."""

    def but(self, **changes: Any) -> Settings:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def server_attributes(self, http: bool) -> dict[str, Any]:
        """What the server is told, by attribute name (each must exist on the server)."""
        timeout = "idle_timeout" if http else "input_timeout"
        return {"max_connections": self.max_connections, timeout: self.idle_timeout}


DEFAULTS = Settings()
"""The defaults, written once."""


def apply_settings(server: Any, attributes: dict[str, Any]) -> None:
    """Set ``attributes`` on ``server``; TypeError for one it does not have (never dropped)."""
    for name, value in attributes.items():
        if not hasattr(server, name):
            raise TypeError(f"{type(server).__name__} has no setting {name!r}")
        setattr(server, name, value)
