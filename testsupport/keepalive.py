"""Keep-alive clients that send requests until told to stop, and what each saw through a stop.

Why this module exists: the handler and WSGI drain tests put the same keep-alive load
through a SIGTERM and check the same way that no request broke; written once here.
Threading: each client runs in its own thread and writes only its own ClientLog; the
test reads a log after joining its thread.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field

from graceserve import GracefulHTTPServer

__all__ = [
    "LOAD_DEADLINE",
    "LOAD_THREADS",
    "MAX_REQUESTS",
    "REQUESTS_BEFORE_SIGNAL",
    "SOCKET_TIMEOUT",
    "ClientLog",
    "keepalive_client",
]


SOCKET_TIMEOUT = 5.0


LOAD_THREADS = 10


REQUESTS_BEFORE_SIGNAL = 20  # per thread, so every connection is warm and busy


MAX_REQUESTS = 20_000  # per thread: a bound, never reached in practice


LOAD_DEADLINE = 20.0  # seconds for the whole run


@dataclass
class ClientLog:
    """What one keep-alive client saw."""

    ok: int = 0
    close_responses: int = 0
    connects: int = 1
    refused_after_close: bool = False
    errors: list[str] = field(default_factory=list)
    late: str = ""  # a request sent after the linger the server promised (see below)
    warm: threading.Event = field(default_factory=threading.Event)
    last_response: float = 0.0


def keepalive_client(address: tuple[str, int], log: ClientLog, deadline: float) -> None:
    """Requests in a loop on one keep-alive connection, reconnecting only when told to close.

    Ends when a reconnect is refused (the clean end), on the first error, or at
    the bounds.  An error is any failure on a request that was sent: no
    response, a reset, a truncated body.  Except one: at the drain the server
    closes an idle connection once ``drain_linger`` (at least) has passed since
    its last response; a client thread that a loaded machine kept off the CPU
    longer than that and then sends is late (``log.late``), the race every
    keep-alive client must retry (RFC 9112, 9.3.1), not a broken request.
    """
    conn = http.client.HTTPConnection(*address, timeout=SOCKET_TIMEOUT)
    told_to_close = False
    log.last_response = time.monotonic()
    try:
        while log.ok < MAX_REQUESTS and time.monotonic() < deadline:
            if told_to_close:
                try:
                    conn.connect()
                except ConnectionRefusedError:
                    log.refused_after_close = True
                    return
                except OSError as exc:  # e.g. reset: the reconnect landed in a closing backlog
                    log.errors.append(f"reconnect after close: {exc!r}")
                    return
                log.connects += 1
                told_to_close = False
            sending = time.monotonic()
            try:
                conn.request("GET", "/")
                with conn.getresponse() as response:
                    body = response.read()
                    will_close = response.will_close
                    status = response.status
            except (http.client.HTTPException, OSError) as exc:
                gap = sending - log.last_response
                failure = f"request {log.ok + 1}: {exc!r}, sent {gap:.3f}s after the last"
                unanswered = isinstance(exc, (http.client.RemoteDisconnected, ConnectionError))
                if unanswered and gap >= GracefulHTTPServer.drain_linger:
                    log.late = failure
                else:
                    log.errors.append(failure)
                return
            log.last_response = time.monotonic()
            if status != 200 or body != b"hello from graceserve\n":
                log.errors.append(f"request {log.ok + 1}: {status} {body!r}")
                return
            log.ok += 1
            if log.ok >= REQUESTS_BEFORE_SIGNAL:
                log.warm.set()
            if will_close:
                log.close_responses += 1
                told_to_close = True
    finally:
        conn.close()
