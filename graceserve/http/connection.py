"""An HTTP connection's state as the reaper sees it: one state, one writer, its time with it.

Why this module exists: the reaper (``GracefulHTTPServer``) decides from the
outside whether a connection is idle between requests, half-way through a
request head or body, or running its handler; the connection's own thread
knows.  Both paths (a ``BaseHTTPRequestHandler`` and a WSGI app) once kept
that knowledge in two vocabularies (a state number here, ``idle``/``reading``
flags there).  Now there is one: ``HTTPConnection.state``, written only by
the transition methods below (Go's ``conn.setState``), each storing the
moment the state was entered in ``since`` together with it.  The generic
``Connection`` flags remain as read-only views for code that reads them.

Threading contract: the transitions are called by the connection's own
thread (the request cycle, ``graceserve.http.cycle``, and the body reader,
``graceserve.http.bodyreader``); the reaper only reads.  A write of one attribute
is atomic; ``since`` is written before ``state`` so a reader that sees the
new state never pairs it with the old time.  The one transition the reaper
must never miss, IDLE -> HEAD, is made under the registry lock together with
the read of ``cut``: a connection the reaper closes while idle either never
reads its request, or knows it raced the close.  The reaper re-checks
``(state, since)`` under the lock before it cuts, so a connection that moved
on meanwhile is left alone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from graceserve.core.server import OPEN, Connection

if TYPE_CHECKING:
    from graceserve.core.drain import DrainController
    from graceserve.http.headbudget import HeadMeter

__all__ = ["BODY", "BUSY", "HEAD", "IDLE", "HTTPConnection"]

BUSY = 0  # running the handler, or between steps: never timed by the reaper
IDLE = 1  # waiting for the next request line (a keep-alive client's think time)
HEAD = 2  # the request line arrived (or a TLS handshake runs); reading the header block
BODY = 3  # blocked reading the request body (``since`` moves with each chunk)

RHYTHM_DECAY = 0.75  # per request: how fast a long gap is forgotten
_now = time.monotonic


class HTTPConnection(Connection):
    """A live HTTP connection as the registry knows it.

    ``state`` and ``since`` change only through ``to_idle``, ``to_head``,
    ``to_busy``, ``to_body`` and ``body_read`` (its own thread).  The request
    body's clock (``body_*``) is written by the body reader in the same
    thread; ``head`` is set by the server before the thread starts;
    ``watch_writes`` by the thread once its TLS handshake is done;
    ``rate_mark`` and ``write_mark`` are the reaper's own notes, written by
    the reaper only.
    """

    __slots__ = (
        "_cuts",
        "body_received",
        "body_serial",
        "body_waited",
        "head",
        "rate_mark",
        "rhythm",
        "since",
        "state",
        "used",
        "watch_writes",
        "write_mark",
    )

    def __init__(
        self,
        request: socket.socket,
        address: Any,
        registry: DrainController[socket.socket, Connection] | None = None,
    ) -> None:
        # BUSY until its handler reaches the request cycle: a handler that replaces the
        # cycle (its own handle()) never records a state, and is then never reaped.
        self.state = BUSY
        self.since = _now()  # when ``state`` was entered (BODY: last progress)
        self.rhythm = 0.0  # recent gaps between a response and the next request (decaying max)
        self.used = False  # a request arrived on it: idle from then on, it is kept alive
        self.head: HeadMeter | None = None  # charges long heads to the server's head budget
        self.body_serial = 0  # which request body the two counters below are about
        self.body_waited = 0.0  # seconds spent blocked waiting for it (reads finished)
        self.body_received = 0  # bytes of it read
        self.rate_mark: tuple[int, float, int] | None = None  # (serial, waited, received)
        self.watch_writes = False  # no kernel bound on its writes (TLS): the reaper watches
        self.write_mark: tuple[int, int, float] | None = None  # (unsent, acked, since)
        # Connection's own fields but its flags (views of ``state`` here, never written).
        self.request = request
        self.address = address
        self._registry = registry
        self._cuts: Mapping[socket.socket, int] = {} if registry is None else registry.cuts

    @property
    def cut(self) -> int:
        """OPEN, CLOSING or FORCED, as the registry recorded it (read with its lock held
        for a stable answer)."""
        return self._cuts.get(self.request, OPEN)

    # -- the transitions (the connection's own thread) ------------------------------------

    def to_idle(self, now: float) -> int:
        """Waiting for the next request (the reaper may close us); what was done to us."""
        self.since = now
        self.state = IDLE
        return self._cuts.get(self.request, OPEN)

    def to_head(self, lock: Any, now: float) -> int:
        """A request line arrived: reading its head; what was done to us meanwhile.

        Under ``lock`` (the registry's), atomic with the reaper's decision to
        close an idle connection.  Learns the gap since the last response (not
        the wait before a first request: no response preceded it, and it holds
        the server's own delay in reading it).
        """
        with lock:
            cut = self._cuts.get(self.request, OPEN)
            gap = now - self.since
            self.since = now
            self.state = HEAD
        if self.used:
            decayed = self.rhythm * RHYTHM_DECAY
            self.rhythm = gap if gap > decayed else decayed
        else:
            self.used = True
        return cut

    def to_handshake(self, now: float) -> None:
        """A TLS handshake runs: timed by the reaper as a request head."""
        self.since = now
        self.state = HEAD

    def to_busy(self) -> int:
        """Serving: neither idle nor reading (never timed); what was done to us."""
        self.state = BUSY
        return self._cuts.get(self.request, OPEN)

    def new_body(self) -> None:
        """A request body begins: its clock starts at zero (the serial goes last: the
        reaper keys its rate window on it)."""
        self.body_waited = 0.0
        self.body_received = 0
        self.body_serial += 1

    def to_body(self, now: float) -> None:
        """Blocked reading the request body from ``now``."""
        self.since = now
        self.state = BODY

    def body_read(self, began: float, received: int) -> None:
        """The blocked read begun at ``began`` returned ``received`` bytes: busy again.

        The state goes first: the reaper never counts a wait twice.
        """
        self.state = BUSY
        self.body_waited += _now() - began
        self.body_received += received

    # -- the generic Connection's flags, read-only views of ``state`` ---------------------

    @property
    def idle(self) -> bool:  # type: ignore[override]
        """Waiting for the next request."""
        return self.state == IDLE

    @property
    def reading(self) -> bool:  # type: ignore[override]
        """Half-way through a request head or body."""
        return self.state == HEAD or self.state == BODY

    @property
    def idle_since(self) -> float:  # type: ignore[override]
        """When the current state began."""
        return self.since
