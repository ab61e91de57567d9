"""Reloading a real graceserve process: apps to deploy, requests across a reload.

Why this module exists: the restart and systemd tests drive the same reloads and read
them the same way; written once here.
Threading: each helper is called from one thread; servers are separate processes.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .process import ServerProcess
from .procfs import receive_queues
from .rawhttp import read_response
from .waiting import wait_until

__all__ = [
    "APP",
    "BROKEN_APP",
    "EXIT_TIMEOUT",
    "IO_TIMEOUT",
    "address_of",
    "finish_post",
    "first_exit",
    "get",
    "is_running",
    "post_in_flight",
    "process_status",
    "short_directory",
    "unix_get",
    "wait_gone",
]


IO_TIMEOUT = 10.0  # seconds, for every client socket


EXIT_TIMEOUT = 15.0  # seconds a process may take to finish a restart or a drain


APP = '''\
"""Test target: every answer names its version and pid; a POST of "wait" waits for a word."""
import os
from http.server import BaseHTTPRequestHandler

VERSION = "v1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._reply(f"{VERSION} pid {os.getpid()}")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if body == b"wait":  # in flight (the whole request read) until the client's word
            body = self.request.recv(4)
        self._reply(f"{VERSION} pid {os.getpid()} got {body.decode()}")

    def _reply(self, text):
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass
'''


BROKEN_APP = 'raise RuntimeError("app.py broken on purpose")\n'


def process_status(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and ")"
    return fields[0], int(fields[2])


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie has exited)."""
    status = process_status(pid)
    return status is not None and status[0] not in ("Z", "X")


def wait_gone(pid: int, timeout: float = EXIT_TIMEOUT) -> None:
    wait_until(lambda: not is_running(pid), timeout=timeout, what=f"pid {pid} to exit")


def first_exit(server: ServerProcess, timeout: float = EXIT_TIMEOUT) -> int:
    """Wait for the first process (our child) to exit; its exit code.

    ``ServerProcess.wait_exit`` would also wait for the stderr reader, which a
    successor keeps alive.  If it hangs, its thread stacks (USR1) go in the failure.
    """
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(server.proc.pid, signal.SIGUSR1)
        with contextlib.suppress(pytest.fail.Exception):
            server.wait_for_line(r"most recent call first", timeout=5.0)
        pytest.fail(f"pid {server.proc.pid} did not exit within {timeout}s:\n{server.output}")


def short_directory() -> Iterator[Path]:
    """A directory whose paths fit in a sockaddr_un (tmp_path may be too long).

    For a fixture to ``yield from``.
    """
    with tempfile.TemporaryDirectory(prefix="gs-", dir="/tmp") as name:
        yield Path(name)


def address_of(server: ServerProcess) -> tuple[str, int]:
    assert server.address is not None
    return server.address


def get(address: tuple[str, int], path: str = "/") -> tuple[int, str]:
    """One GET on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection(*address, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def unix_get(path: Path) -> tuple[int, str]:
    """One GET on a fresh connection to the Unix socket ``path``: (status, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(str(path))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            return response.status, response.read().decode()
        finally:
            response.close()


def post_in_flight(address: tuple[str, int]) -> socket.socket:
    """Send a whole POST (body "wait"), and wait until a handler has read it.

    The handler then waits for one more word on the connection: the request
    stays in flight until the test sends it (``finish_post``).  (Not a stalled
    body: a request still arriving when the drain starts is not in-flight work,
    and is closed after the linger.)
    """
    sock = socket.create_connection(address, timeout=IO_TIMEOUT)
    try:
        sock.sendall(b"POST /wait HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\nwait")
        key = (address[1], sock.getsockname()[1])
        wait_until(lambda: receive_queues().get(key) == 0, what="the server to read our POST")
    except BaseException:
        sock.close()
        raise
    return sock


def finish_post(sock: socket.socket) -> tuple[int, dict[str, str], str]:
    """Send the word the handler waits for; read the answer: status, lower-cased headers, body."""
    sock.sendall(b"done")
    status, headers, body = read_response(sock)
    return status, headers, body.decode()
