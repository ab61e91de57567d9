"""Keep-alive load: client threads that count successes and classify every failure.

Why this module exists: "zero broken requests through a stop or a reload" is
the heart of graceserve's contract, and several suites check it (the worker
tests, the container tests, the contract matrix).  One generator, here: each
client thread keeps one HTTP/1.1 connection alive (``http.client``, as a real
client library does), reconnects when the server said ``Connection: close``,
and records what went wrong.

A broken request is one that was sent and got no complete 200 answer: a reset,
an EOF before the response, a timeout, a wrong status.  A refused connect after
the test said the stop began (``stopping``) is not a failure: the listener is
closed then; that client counts it in ``refused`` and ends.  Every socket has a
timeout; every loop is bounded (``limit`` seconds at most).

The tail (README, "The linger"): at a drain or a reload an idle keep-alive
connection gets one more request for its linger (three times its recent gaps,
at least 0.2 s), then a FIN.  A client starved of CPU longer than that (a
machine far past its cores) sends into the FIN: an EOF the server was entitled
to.  With ``tail=SECONDS`` such an EOF, on a reused connection whose previous
request was sent more than SECONDS before (an upper bound on the server's
gap), is counted in ``tail``, not in ``failures``; without it (the default),
every EOF is a failure.

Threading: the clients run in their own daemon threads; ``total``,
``failures``, ``failure_kinds`` and ``pids`` may be read from any thread while
they run (counts only grow), ``stop`` joins them.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from .waiting import wait_until

__all__ = ["FAILURE_KINDS", "IO_TIMEOUT", "LOAD_LIMIT", "Client", "Load", "classify"]

IO_TIMEOUT = 10.0
"""Seconds any client socket may block."""
LOAD_LIMIT = 40.0
"""Seconds a load runs at most, whatever the test does."""

FAILURE_KINDS = ("connect", "reset", "eof", "timeout", "status", "other")
"""What can break a request: a connect that failed before the stop, a reset (or a write
to a closed connection), an EOF instead of a response, a timeout, a status other than
200, anything else."""


def classify(exc: BaseException) -> str:
    """The kind of failure (one of FAILURE_KINDS) an exception of a request means."""
    if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return "eof"  # RemoteDisconnected is a ConnectionResetError: asked first
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


@dataclass
class Client:
    """What one client thread did."""

    requests: int = 0
    refused: int = 0
    pids: set[int] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    tail: list[str] = field(default_factory=list)

    def failed(self, kind: str, what: str) -> None:
        self.kinds[kind] += 1
        self.failures.append(f"{kind}: {what}")


class Load:
    """``clients`` keep-alive clients sending ``GET path`` until ``stop()``, or until a
    connect is refused after ``stopping`` was set.  HTTPS with ``tls``; ``address``
    a string: a Unix socket's path (plain HTTP).

    An answer whose body says ``pid N`` (the worker tests' app, the contract app's JSON)
    adds N to ``pids``.
    """

    def __init__(
        self,
        address: tuple[str, int] | str,
        clients: int,
        *,
        path: str = "/",
        tls: ssl.SSLContext | None = None,
        limit: float = LOAD_LIMIT,
        tail: float | None = None,
    ) -> None:
        self.address = address
        self.path = path
        self.tls = tls
        self.limit = limit
        self.tail = tail
        self.clients = [Client() for _ in range(clients)]
        self.stopping = threading.Event()  # set by the test when it signals a stop
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(c,), name=f"test-load-{i}", daemon=True)
            for i, c in enumerate(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def _connection(self) -> http.client.HTTPConnection:
        if isinstance(self.address, str):
            return _UnixHTTPConnection(self.address)
        host, port = self.address
        if self.tls is not None:
            return http.client.HTTPSConnection(host, port, timeout=IO_TIMEOUT, context=self.tls)
        return http.client.HTTPConnection(host, port, timeout=IO_TIMEOUT)

    def _run(self, client: Client) -> None:
        give_up = time.monotonic() + self.limit
        conn: http.client.HTTPConnection | None = None
        sent = 0.0  # when the previous request on this connection was sent (0: none yet)
        while not self._stop.is_set() and time.monotonic() < give_up:
            if conn is None:
                sent = 0.0
                conn = self._connection()
                try:
                    conn.connect()
                except OSError as exc:
                    conn.close()
                    conn = None
                    # A Unix socket's file may be gone too once its server stopped.
                    refused = (ConnectionRefusedError, FileNotFoundError)
                    if self.stopping.is_set() and isinstance(exc, refused):
                        client.refused += 1
                        return
                    client.failed("connect", repr(exc))
                    continue
            previous, sent = sent, time.monotonic()
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read().decode("utf-8", "replace")
                if response.status != 200:
                    client.failed("status", f"{response.status} {body!r}")
                elif (match := re.search(r"pid\D{0,3}(\d+)", body)) is not None:
                    client.pids.add(int(match[1]))
                client.requests += 1
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                gap = sent - previous if previous else 0.0
                what = f"request {client.requests + 1}: {exc!r}"
                if previous:
                    what += f", sent {gap:.3f}s after the previous one"
                if self.tail is not None and classify(exc) == "eof" and gap > self.tail:
                    client.tail.append(what)
                else:
                    client.failed(classify(exc), what)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def total(self) -> int:
        """Requests answered so far, by every client."""
        return sum(client.requests for client in self.clients)

    def wait_for_requests(self, more: int, timeout: float = 20.0) -> None:
        """Wait until ``more`` requests more than now were answered."""
        mark = self.total()
        wait_until(lambda: self.total() >= mark + more, timeout, f"{more} more requests")

    def stop(self) -> None:
        """Stop every client and wait for them (fails if one hangs)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=IO_TIMEOUT * 2)
        assert not any(thread.is_alive() for thread in self._threads), "a client hangs"

    @property
    def failures(self) -> list[str]:
        """Every broken request, as ``kind: what``."""
        return [failure for client in self.clients for failure in client.failures]

    def failure_kinds(self) -> Counter[str]:
        """Broken requests counted by kind (FAILURE_KINDS)."""
        total: Counter[str] = Counter()
        for client in self.clients:
            total.update(client.kinds)
        return total

    @property
    def tail_eofs(self) -> list[str]:
        """EOFs the linger allowed (``tail``): the client came back too late."""
        return [eof for client in self.clients for eof in client.tail]

    @property
    def refused(self) -> int:
        """Connects refused after the stop began (not failures)."""
        return sum(client.refused for client in self.clients)

    @property
    def pids(self) -> set[int]:
        """The pids the answers named."""
        return {pid for client in self.clients for pid in client.pids}


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (``Host: localhost``)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=IO_TIMEOUT)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
