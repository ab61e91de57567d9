"""HTTP/1.1 on a plain socket: write a request, read exactly one response.

Why this module exists: the tests need to hold a request in flight, pipeline,
half-close or reset, so they own the socket and the bytes on it; the stdlib's
``http.client.HTTPResponse`` still parses what comes back.  Each call is on
the caller's socket: thread-safe as far as each socket is used by one thread.
"""

from __future__ import annotations

import contextlib
import http.client
import socket

__all__ = ["IO_TIMEOUT", "get", "get_request", "http_get", "open_request", "read_response"]

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


def open_request(
    address: tuple[str, int], path: str = "/", *, close: bool = False, timeout: float = IO_TIMEOUT
) -> socket.socket:
    """Connect and send ``GET path``; the request is then in flight (or queued) at the server."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.sendall(get_request(path, close=close))
    except BaseException:
        sock.close()
        raise
    return sock


def get(
    address: tuple[str, int], path: str = "/", *, close: bool = False, timeout: float = IO_TIMEOUT
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
