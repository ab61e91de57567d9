"""Helpers for the WSGI tests: an in-process server around a validated app, a raw HTTP client.

Every application served here is wrapped in ``wsgiref.validate.validator``,
so a PEP 3333 violation on either side (ours or the app's) fails the test.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.validate import validator

from graceserve.wsgi.server import GracefulWSGIServer

TIMEOUT = 10.0

Address = Any
"""A TCP ``server_address`` as socketserver types it; (host, port) here."""


@contextlib.contextmanager
def serving(
    app: Any, validate: bool = True, grace: float = 5.0, **settings: Any
) -> Iterator[GracefulWSGIServer]:
    """A GracefulWSGIServer on 127.0.0.1:0 serving ``app`` in a thread; drained at exit."""
    server_class = type("TestWSGIServer", (GracefulWSGIServer,), settings)
    server = server_class(("127.0.0.1", 0), validator(app) if validate else app)
    thread = threading.Thread(target=server.serve_forever, name="test-wsgi-serve", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.drain(grace)
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None


class Client:
    """One raw connection; reads responses exactly as framed (or fails the test)."""

    def __init__(self, address: Address, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes = b"", version: str = "HTTP/1.1") -> None:  # fmt: skip
        lines = [f"{method} {target} {version}", "Host: test"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body and not any(k.lower() in ("content-length", "transfer-encoding")
                            for k in headers or {}):  # fmt: skip
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def read_head(self) -> Reply:
        status_line = self.file.readline()
        if not status_line:
            raise EOFError("connection closed before a response")
        raw = status_line
        version, status, *reason = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        assert version == "HTTP/1.1" or version == "HTTP/1.0", status_line
        reply = Reply(int(status), reason[0] if reason else "")
        while True:
            line = self.file.readline()
            raw += line
            assert line.endswith(b"\r\n"), f"truncated head: {raw!r}"
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            reply.headers.append((name, value.strip()))
        reply.raw_head = raw
        return reply

    def read_response(self, head_request: bool = False) -> Reply:
        reply = self.read_head()
        if reply.status < 200:
            return reply
        if head_request or reply.status in (204, 304):
            return reply
        if reply.header("Transfer-Encoding") == "chunked":
            parts = []
            while True:
                size_line = self.file.readline()
                assert size_line.endswith(b"\r\n"), size_line
                size = int(size_line, 16)
                if size == 0:
                    assert self.file.readline() == b"\r\n"
                    break
                parts.append(self.file.read(size))
                assert self.file.read(2) == b"\r\n"
            reply.body = b"".join(parts)
        elif reply.header("Content-Length") is not None:
            length = int(reply.header("Content-Length") or 0)
            reply.body = self.file.read(length)
            assert len(reply.body) == length, "short body"
        else:
            reply.body = self.file.read()
        return reply

    def at_eof(self) -> bool:
        """Whether the server closed the connection (blocks until data or EOF)."""
        return self.file.read(1) == b""


def get(address: Address, target: str = "/", **kwargs: Any) -> Reply:
    with Client(address) as client:
        client.request("GET", target, headers={"Connection": "close"}, **kwargs)
        return client.read_response()


def hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = b"hello\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _SizedReads:
    """``wsgi.input`` as an app under the validator sees it, with ``read()`` allowed.

    The validator holds apps to PEP 3333's ``read(size)``; Werkzeug, trusting
    ``wsgi.input_terminated`` (an extension the validator predates), calls
    ``read()`` with no size.  This turns that into sized reads, through the
    validator's own checks.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            return bytes(self.stream.read(size))
        return b"".join(iter(lambda: bytes(self.stream.read(65536)), b""))

    def readline(self, size: int | None = -1) -> bytes:
        line = self.stream.readline() if size is None or size < 0 else self.stream.readline(size)
        return bytes(line)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return list(self.stream.readlines())

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.stream)


def sized_reads(app: Any) -> Any:
    """Wrap ``app`` so that its ``wsgi.input`` accepts ``read()`` (see _SizedReads)."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.input"] = _SizedReads(environ["wsgi.input"])
        return app(environ, start_response)

    return wrapped
