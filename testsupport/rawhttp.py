"""HTTP/1.1 on a plain (or TLS) socket: write requests, read exactly one response at a time.

Why this module exists: the tests need to hold a request in flight, pipeline,
half-close or reset, so they own the socket and the bytes on it.  Two layers:
the functions (``get``, ``open_request``, ``read_response``...) for one request
on a socket, where the stdlib's ``http.client.HTTPResponse`` parses the answer;
and ``Connection``, one client connection that sends any bytes (malformed ones
included), reads each response exactly as framed (``Content-Length``, chunked,
close-delimited; a HEAD, 1xx, 204 or 304 without a body) and says how the
server ended the connection (a FIN, a reset, or still open).

Threading: each call is on the caller's socket or ``Connection``: thread-safe
as far as each one is used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import ssl
from dataclasses import dataclass, field

__all__ = [
    "EOF",
    "IO_TIMEOUT",
    "OPEN",
    "RESET",
    "Connection",
    "Reply",
    "connect",
    "get",
    "get_request",
    "http_get",
    "open_request",
    "read_response",
    "request_bytes",
]

IO_TIMEOUT = 10.0
"""Seconds any client socket made here may block."""

Response = tuple[int, dict[str, str], bytes]
"""status, lower-cased headers, body"""


def get_request(path: str = "/", *, close: bool = False) -> bytes:
    """A well-formed HTTP/1.1 ``GET path`` (with ``Connection: close`` if ``close``)."""
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def read_response(sock: socket.socket) -> Response:
    """Read exactly one response from ``sock``: status, lower-cased headers, body."""
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        body = response.read()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, headers, body
    finally:
        response.close()


def connect(address: tuple[str, int] | str, timeout: float = IO_TIMEOUT) -> socket.socket:
    """A connection to ``(host, port)``, or to a Unix socket's path (a string)."""
    if not isinstance(address, str):
        return socket.create_connection(address, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def open_request(
    address: tuple[str, int] | str,
    path: str = "/",
    *,
    close: bool = False,
    timeout: float = IO_TIMEOUT,
) -> socket.socket:
    """Connect (TCP, or a Unix socket's path) and send ``GET path``; the request is then
    in flight (or queued) at the server."""
    sock = connect(address, timeout=timeout)
    try:
        sock.sendall(get_request(path, close=close))
    except BaseException:
        sock.close()
        raise
    return sock


def get(
    address: tuple[str, int] | str,
    path: str = "/",
    *,
    close: bool = False,
    timeout: float = IO_TIMEOUT,
) -> Response:
    """One ``GET path`` on a fresh connection: status, lower-cased headers, body."""
    with contextlib.closing(open_request(address, path, close=close, timeout=timeout)) as sock:
        return read_response(sock)


def http_get(
    address: tuple[str, int], path: str = "/", timeout: float = IO_TIMEOUT
) -> tuple[int, bytes]:
    """One request with ``Connection: close``: status and body, once the server has closed.

    Waiting for the server's close means the server has let go of the
    connection when this returns (graceserve unregisters a connection before
    it closes it): a drain started next does not find it still open.
    """
    with contextlib.closing(open_request(address, path, close=True, timeout=timeout)) as sock:
        status, _headers, body = read_response(sock)
        after = sock.recv(1)
    if after:
        raise AssertionError(f"bytes after a Connection: close response: {after!r}")
    return status, body


# -- one connection, exact framing ------------------------------------------------------

EOF = "eof"
"""``Connection.ending``: the server closed cleanly (a FIN, or TLS close_notify then FIN)."""
RESET = "reset"
"""``Connection.ending``: the server reset the connection (or TLS failed)."""
OPEN = "open"
"""``Connection.ending``: still open when the wait ran out."""

MAX_HEAD = 65536  # bytes of response head this client reads at most (a runaway server)


def request_bytes(
    method: str = "GET",
    target: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    close: bool = False,
) -> bytes:
    """A request as bytes: ``Host: test`` first, ``headers``, a ``Content-Length`` for
    ``body`` unless the headers frame it, ``Connection: close`` if ``close``."""
    lines = [f"{method} {target} {version}", "Host: test"]
    given = {name.lower() for name in headers or {}}
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body and not given & {"content-length", "transfer-encoding"}:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Reply:
    """One response as it came: status line, headers in order, the de-framed body."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (repeated ones joined with ``,``), or None."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ",".join(values) if values else None

    @property
    def says_close(self) -> bool:
        """Whether the response says ``Connection: close``."""
        return "close" in (self.header("Connection") or "").lower()

    def json(self) -> dict[str, object]:
        """The body as a JSON object (the contract app's answers)."""
        import json

        value = json.loads(self.body)
        assert isinstance(value, dict), self.body
        return value


class Connection:
    """One client connection to ``address`` (TLS with ``tls``), every read bounded by ``timeout``.

    ``send`` writes any bytes; ``request`` writes a well-formed request (several
    before reading: pipelining); ``read_reply`` reads exactly one response;
    ``read_head`` and ``read_chunk`` read a streamed one piece by piece;
    ``ending`` waits for the server to end the connection and says how.
    Raises ``EOFError`` when the server closes before a status line.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = IO_TIMEOUT,
    ) -> None:
        raw = socket.create_connection(address, timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock: socket.socket = (
                raw if tls is None else tls.wrap_socket(raw, server_hostname=address[0])
            )
        except BaseException:
            raw.close()
            raise
        self.timeout = timeout
        self.file: io.BufferedReader = self.sock.makefile("rb")

    def close(self) -> None:
        """Close our end (a FIN to the server; idempotent)."""
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def local_port(self) -> int:
        """Our port (the server's ``remote_port`` in /proc/net/tcp)."""
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        """Write ``data`` as it is."""
        self.sock.sendall(data)

    def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        version: str = "HTTP/1.1",
        close: bool = False,
    ) -> None:
        """Write one well-formed request (see ``request_bytes``)."""
        self.send(request_bytes(method, target, headers, body, version=version, close=close))

    def _line(self) -> bytes:
        line = self.file.readline(MAX_HEAD)
        if not line.endswith(b"\n"):
            raise EOFError(f"connection ended inside a response head: {line!r}")
        return line

    def read_head(self) -> Reply:
        """Read a status line and headers; the body is left to read (``read_chunk``)."""
        try:
            first = self.file.readline(MAX_HEAD)
        except ConnectionResetError as exc:
            raise EOFError(f"connection reset before a response: {exc!r}") from exc
        if not first:
            raise EOFError("connection closed before a response")
        if not first.endswith(b"\n"):
            raise EOFError(f"connection ended inside a status line: {first!r}")
        version, _, rest = first.decode("latin-1").rstrip("\r\n").partition(" ")
        status, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not status.isdigit():
            raise AssertionError(f"not an HTTP/1.x status line: {first!r}")
        reply = Reply(version, int(status), reason)
        while (line := self._line()) not in (b"\r\n", b"\n"):
            name, _, value = line.decode("latin-1").partition(":")
            reply.headers.append((name, value.strip()))
        reply.chunked = "chunked" in (reply.header("Transfer-Encoding") or "").lower()
        return reply

    def read_chunk(self, reply: Reply) -> bytes | None:
        """The next chunk of the chunked ``reply``; None after the last (trailers read)."""
        size_line = self._line()
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while self._line() not in (b"\r\n", b"\n"):
                pass
            return None
        chunk = self.file.read(size)
        if len(chunk) < size or self.file.read(2) != b"\r\n":
            raise EOFError(f"connection ended inside a chunk of {size} bytes")
        reply.body += chunk
        return chunk

    def read_reply(self, *, head_request: bool = False) -> Reply:
        """Read exactly one final response (interim 1xx ones are skipped)."""
        reply = self.read_head()
        while 100 <= reply.status < 200:
            reply = self.read_head()
        if head_request or reply.status in (204, 304):
            return reply
        if reply.chunked:
            while self.read_chunk(reply) is not None:
                pass
        elif (length := reply.header("Content-Length")) is not None:
            reply.body = self.file.read(int(length))
            if len(reply.body) != int(length):
                raise EOFError(f"short body: {len(reply.body)} of {length} bytes")
        else:
            reply.body = self.file.read()  # close-delimited
        return reply

    def ending(self, timeout: float | None = None) -> str:
        """Wait up to ``timeout`` (default: ours) for the server to end the connection:
        ``EOF``, ``RESET`` or ``OPEN``.  Bytes instead are an error (AssertionError).

        After ``OPEN`` the connection can no longer be read (a timed-out socket file).
        """
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.file.read(1)
        except (ConnectionResetError, BrokenPipeError):
            return RESET
        except ssl.SSLZeroReturnError:
            return EOF
        except ssl.SSLError:
            return RESET
        except TimeoutError:
            return OPEN
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(self.timeout)
        if data:
            data += self.file.read1(200)
            raise AssertionError(f"bytes where the end of the connection was expected: {data!r}")
        return EOF
