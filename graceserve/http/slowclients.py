"""The reaper's rules for clients that are slow on purpose, judged from the outside.

Why this module exists: a thread per connection is cheap until a client holds
one for ever while looking busy.  The idle timeout catches a client that
stops; two kinds keep moving just enough to dodge it, and the reaper
(``GracefulHTTPServer.service_actions``) catches them with these rules:

- **A request body trickled below a minimum rate** (slow POST).  Each blocked
  read of a body moves the stall timer, so one byte a minute resets it for
  ever.  The body reader keeps two counters on the connection record: the
  seconds spent blocked waiting for the body and the bytes read
  (``graceserve.http.bodyreader``).  Every ``window`` seconds *of waiting* the
  body must bring ``min_rate * window`` bytes: the time the application
  spends between its reads is not the client's and does not count, and a
  slow but working link (a phone on a bad network) is far above the default
  floor.  Measured over windows, not over the whole body, so a fast start
  buys no licence to trickle afterwards.  (Apache's mod_reqtimeout
  ``MinRate`` and nginx's ``client_body_timeout`` are the same idea.)
- **A response the client stopped reading, over TLS.**  A plain connection's
  writes are bounded by the kernel (``SO_SNDTIMEO``, set once at accept: a
  send that makes no progress for the idle timeout fails); the ssl module
  retries past that bound, and a socket timeout would cost every TLS request
  ~10 % of its throughput.  So for a TLS connection that is running its
  handler (BUSY) the reaper reads the kernel's send queue, ``SIOCOUTQ``, and
  the bytes the client acknowledged (``TCP_INFO``): a queue that is not empty
  and has not moved for the idle timeout is a stall.  A slow reader
  acknowledges bytes, so it moves: the bound is per stall, never per
  response.  One or two system calls per busy TLS connection per reaper pass;
  none per request.

Rule: these functions only decide; the server cuts (under the registry lock,
after re-checking that the connection is still where the decision found it).
They read the record without its lock: a torn read only delays a verdict or
nominates a candidate that the re-check then spares.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from graceserve.http.connection import BODY, BUSY, HTTPConnection

__all__ = [
    "SIOCOUTQ",
    "acked_bytes",
    "body_too_slow",
    "unsent_bytes",
    "verdict",
    "write_stalled",
]

SIOCOUTQ = 0x5411  # Linux (= TIOCOUTQ): bytes in the send queue not yet acknowledged
_QUEUE = struct.Struct("i")
_TCP_INFO_BYTES_ACKED = struct.Struct("Q")  # struct tcp_info.tcpi_bytes_acked (Linux 4.2+)
_TCP_INFO_BYTES_ACKED_OFFSET = 120
_TCP_INFO_SIZE = _TCP_INFO_BYTES_ACKED_OFFSET + _TCP_INFO_BYTES_ACKED.size


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that its peer has not acknowledged; 0 if unknown.  Never blocks."""
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * _QUEUE.size)
    except (OSError, ValueError):  # closed meanwhile, or not a socket the kernel can say about
        return 0
    return int(_QUEUE.unpack(raw)[0])


def acked_bytes(sock: socket.socket) -> int | None:
    """Bytes of ``sock``'s output its TCP peer acknowledged, in all; None if not TCP or unknown."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_SIZE:  # a kernel before 4.2
        return None
    return int(_TCP_INFO_BYTES_ACKED.unpack_from(info, _TCP_INFO_BYTES_ACKED_OFFSET)[0])


def write_stalled(
    sock: socket.socket, conn: HTTPConnection, now: float, timeout: float
) -> float | None:
    """How long ``conn``'s output has been stuck, if that is ``timeout`` or more; else None.

    Stuck: bytes wait in the send queue and neither their count nor the bytes
    the peer acknowledged moved.  Updates ``conn.write_mark`` (reaper only).
    """
    unsent = unsent_bytes(sock)
    if not unsent:
        conn.write_mark = None
        return None
    acked = acked_bytes(sock) or 0
    mark = conn.write_mark
    if mark is None or mark[0] != unsent or mark[1] != acked:
        conn.write_mark = (unsent, acked, now)
        return None
    stuck = now - mark[2]
    return stuck if stuck >= timeout else None


def body_too_slow(conn: HTTPConnection, now: float, window: float, min_rate: float) -> float | None:
    """The rate (bytes/s) of ``conn``'s body over its last window of waiting, if under
    ``min_rate``; else None.

    Call only while the connection waits for its body (BODY).  A window
    closes each time another ``window`` seconds of waiting have passed; one
    that brought enough starts the next.  Updates ``conn.rate_mark`` (reaper
    only).
    """
    serial = conn.body_serial
    waited = conn.body_waited + max(now - conn.since, 0.0)  # the blocked read counts
    received = conn.body_received
    mark = conn.rate_mark
    if mark is None or mark[0] != serial:  # a new body: its first window starts at zero
        mark = conn.rate_mark = (serial, 0.0, 0)
    span = waited - mark[1]
    if span < window:
        return None
    rate = (received - mark[2]) / span
    if rate < min_rate:
        return rate
    conn.rate_mark = (serial, waited, received)
    return None


def verdict(
    sock: socket.socket,
    conn: HTTPConnection,
    state: int,
    now: float,
    idle_timeout: float | None,
    min_body_rate: float | None,
) -> str | None:
    """Why ``conn``, found in ``state``, should be cut as a slow client (in words, for the
    log); None if it should not.

    A BUSY connection is judged on its writes, only when ``conn.watch_writes``
    (TLS: nothing else bounds them); a BODY one on its body's rate.
    """
    if not idle_timeout:
        return None
    if state == BUSY:
        if not conn.watch_writes:
            return None  # a plain connection: SO_SNDTIMEO bounds its writes
        stuck = write_stalled(sock, conn, now, idle_timeout)
        if stuck is None:
            return None
        return f"response write stalled (the client read nothing for {stuck:.1f} s); closed"
    if state != BODY or not min_body_rate:
        return None
    rate = body_too_slow(conn, now, idle_timeout, min_body_rate)
    if rate is None:
        return None
    return (
        f"request body arriving at {rate:.0f} bytes/s over the last {idle_timeout:g} s "
        f"of waiting, under the minimum of {min_body_rate:g} (--min-body-rate); closed"
    )
