"""Stopping a real graceserve process, and what its clients and its log saw.

Why this module exists: the CLI, stop-contract and ctl tests all start a server, put
requests in flight, signal it and read what the clients and the log saw; written once here.
Threading: each helper is called from one thread; servers are separate processes.
"""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Callable
from pathlib import Path

from .process import ServerProcess
from .procfs import tcp_sockets
from .rawhttp import open_request
from .waiting import wait_until

__all__ = [
    "IO_TIMEOUT",
    "SUMMARY",
    "StartServer",
    "addr",
    "assert_no_traceback",
    "in_flight",
    "read_until_closed",
    "refused",
    "start_ready",
    "wait_read_by_server",
    "write_module",
]


StartServer = Callable[..., ServerProcess]


IO_TIMEOUT = 10.0  # seconds, for every client socket


SUMMARY = (
    r"stopped: (?P<served>\d+) served during the drain, (?P<cut>\d+) cut, [\d.]+s, exit code {}"
)


def write_module(directory: Path, name: str, source: str) -> None:
    """Write ``directory/name.py`` for use as a target (run the server with cwd=directory)."""
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def wait_read_by_server(server_port: int, sock: socket.socket) -> None:
    """Wait until a handler has read what we sent on ``sock``.

    Our end has nothing unacknowledged (the bytes reached the server's end), and the
    server's end (local port the server's, remote port ours) is accepted (it has an
    inode) and has nothing unread: a handler thread read the request.
    """
    client_port = sock.getsockname()[1]

    def read() -> bool:
        table = tcp_sockets()
        delivered = any(
            row.local_port == client_port and row.remote_port == server_port and not row.unsent
            for row in table
        )
        consumed = any(
            row.local_port == server_port
            and row.remote_port == client_port
            and row.state == "01"
            and row.inode
            and not row.unread
            for row in table
        )
        return delivered and consumed

    wait_until(read, what="the server to read our request")


def in_flight(address: tuple[str, int], path: str) -> socket.socket:
    """Send ``GET path`` and wait until the server is handling it."""
    sock = open_request(address, path)
    try:
        wait_read_by_server(address[1], sock)
    except BaseException:
        sock.close()
        raise
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (EOF) or resets the connection."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def start_ready(start_server: StartServer, *args: str, **kwargs: object) -> ServerProcess:
    """Start the demo app (or a target) on 127.0.0.1:0 and wait until it is ready."""
    server = start_server(["--bind", "127.0.0.1:0", *args], **kwargs)
    server.wait_ready()
    return server


def addr(server: ServerProcess) -> tuple[str, int]:
    assert server.address is not None
    return server.address


def assert_no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in server.output, server.output


def refused(address: tuple[str, int]) -> bool:
    """Whether a connect to ``address`` is refused (a connect that succeeds is closed)."""
    try:
        socket.create_connection(address, timeout=IO_TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False
