"""One live connection as the registry knows it, and small socket helpers.

Why this module exists: the accept loop, the drain and the HTTP handler all
talk about the same record (is it idle, is it reading a head, was it cut?),
so it lives apart from any of them.  Its cut state is not stored here: the
drain controller records it once (it also does the accounting), and
``Connection.cut`` reads it from there.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import time
from typing import Any

from graceserve.core.drain import CLOSING, FORCED, OPEN, DrainController

__all__ = ["CLOSING", "FORCED", "OPEN", "Connection", "format_address"]

_Address = Any  # socketserver's own address type: a tuple for TCP


class Connection:
    """One live connection, as the registry knows it.

    Written by its handler thread, read by the drain; the fields the two share
    are only touched with the drain controller's lock held.
    """

    __slots__ = ("_registry", "address", "idle", "idle_since", "reading", "request")

    def __init__(
        self,
        request: socket.socket,
        address: _Address,
        registry: DrainController[socket.socket, Connection] | None = None,
    ) -> None:
        self.request = request
        self.address = address
        self.idle = False  # waiting for the next request and safe to cut
        self.reading = False  # receiving a request head
        self.idle_since = time.monotonic()  # when ``idle`` or ``reading`` last changed
        self._registry = registry

    @property
    def cut(self) -> int:
        """OPEN, CLOSING (read side shut while idle) or FORCED, as the registry recorded it.

        Read with the registry's lock held for a stable answer.
        """
        if self._registry is None:
            return OPEN
        return self._registry.cut_state(self.request)


def format_address(address: _Address) -> str:
    """``host:port``, with brackets around an IPv6 host; ``unix:PATH`` for a path."""
    if isinstance(address, (str, bytes)):
        return "unix:" + (address.decode() if isinstance(address, bytes) else address)
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def shutdown_quietly(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    """``sock.shutdown(how)``, ignoring a socket already closed or disconnected."""
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def drain_socket(sock: socket.socket) -> None:
    """Read and discard whatever a non-blocking socket holds."""
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def has_buffered_input(handler: socketserver.BaseRequestHandler, sock: socket.socket) -> bool:
    """True if the handler's buffered ``rfile`` already holds unread bytes."""
    rfile = getattr(handler, "rfile", None)
    peek = getattr(rfile, "peek", None)
    if peek is None:
        return False
    previous = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(peek(1))
    except OSError:
        return False
    finally:
        sock.settimeout(previous)
