"""WSGIOptions: what a GracefulWSGIServer is told (HTTPOptions and the WSGI fields).

Why this module exists: the WSGI server's mount point and ``wsgi.multiprocess``
are options like the HTTP ones, applied once in the constructor; the environ
keys shared by every request are computed from them when the server binds.
"""

from __future__ import annotations

from dataclasses import dataclass

from graceserve.http.options import HTTPOptions
from graceserve.settings import DEFAULTS

__all__ = ["DEFAULT_THREADS", "WSGIOptions"]

DEFAULT_THREADS = 64
"""Pool threads per process: requests in flight at once (the rest wait their turn)."""


@dataclass(frozen=True)
class WSGIOptions(HTTPOptions):
    """The options a GracefulWSGIServer reads.  Immutable; safe to share between threads."""

    root_path: str = DEFAULTS.root_path
    """SCRIPT_NAME: the path the app is mounted at ('' or /path)."""
    multiprocess: bool = False
    """``wsgi.multiprocess``: True when other processes serve the same app at once."""
    threads: int | None = DEFAULT_THREADS
    """Threads serving the connections (``graceserve.core.parking``): idle keep-alive
    connections are parked in one selector, not held by a thread each; while every thread
    is held for over a second with requests waiting, more are started (up to
    ``max_connections``) and end once idle; None: a thread per connection."""
