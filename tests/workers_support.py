"""Helpers for the worker tests: the app (answers name their pid), keep-alive load that
tells a broken request from a refused connect, and reading the supervisor's log.

A broken request is one that was sent and got no complete 200 answer (a reset, an
EOF, a timeout, a wrong status).  A connect that is refused after the stop began is
not a failure: the listener is closed then.  Every socket has a timeout; every loop
is bounded.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import ServerProcess, wait_until

StartServer = Callable[..., ServerProcess]

IO_TIMEOUT = 10.0
LOAD_LIMIT = 40.0

APP = '''\
"""Worker test target: every answer names its pid; /slow?seconds=N answers after N s."""
import os
import time
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(float(self.path.partition("=")[2] or "1"))
        if self.path == "/freeze":  # hold the GIL: the whole interpreter stops
            import ctypes
            ctypes.PyDLL(None).sleep(60)
        data = f"pid {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass
'''


def write_app(directory: Path, text: str = APP) -> Path:
    (directory / "app.py").write_text(text)
    return directory


def start_workers(
    start_server: StartServer, directory: Path, *args: str, target: str = "app:Handler"
) -> ServerProcess:
    """Serve ``target`` from ``directory`` with ``args``; wait until the supervisor says
    every worker is ready (or, with --workers 1, until the process listens)."""
    server = start_server(
        [target, "--bind", "127.0.0.1:0", "--grace", "10", *args],
        cwd=directory,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    server.wait_ready()
    if "--workers" in args and args[args.index("--workers") + 1] != "1":
        server.wait_for_line(r"supervisor pid \d+: \d+ workers ready")
    return server


def get(address: tuple[str, int], path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection(*address, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def served_by(body: str) -> int:
    match = re.search(r"pid (\d+)", body)
    assert match is not None, body
    return int(match[1])


def worker_pids(server: ServerProcess) -> list[int]:
    """Pids of the workers the supervisor logged it started, in order."""
    return [int(m) for m in re.findall(r"started worker pid (\d+)", server.output)]


@dataclass
class Client:
    requests: int = 0
    refused: int = 0
    pids: set[int] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)


class Load:
    """Keep-alive clients sending GET / until ``stop()`` or until refused after ``stopping``."""

    def __init__(self, address: tuple[str, int], clients: int) -> None:
        self.address = address
        self.clients = [Client() for _ in range(clients)]
        self.stopping = threading.Event()  # set by the test when it signals a stop
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(c,), name=f"test-load-{i}", daemon=True)
            for i, c in enumerate(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, client: Client) -> None:
        give_up = time.monotonic() + LOAD_LIMIT
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < give_up:
            if conn is None:
                conn = http.client.HTTPConnection(*self.address, timeout=IO_TIMEOUT)
                try:
                    conn.connect()
                except OSError as exc:
                    conn = None
                    if self.stopping.is_set():
                        client.refused += 1
                        return
                    client.failures.append(f"connect: {exc!r}")
                    continue
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    client.failures.append(f"{response.status} {body!r}")
                elif (match := re.search(r"pid (\d+)", body)) is not None:
                    client.pids.add(int(match[1]))  # the worker app names its pid
                client.requests += 1
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                client.failures.append(f"request {client.requests + 1}: {exc!r}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def total(self) -> int:
        return sum(client.requests for client in self.clients)

    def wait_for_requests(self, more: int, timeout: float = 20.0) -> None:
        mark = self.total()
        wait_until(lambda: self.total() >= mark + more, timeout, f"{more} more requests")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=IO_TIMEOUT * 2)
        assert not any(thread.is_alive() for thread in self._threads), "a client hangs"

    @property
    def failures(self) -> list[str]:
        return [failure for client in self.clients for failure in client.failures]

    @property
    def pids(self) -> set[int]:
        return {pid for client in self.clients for pid in client.pids}


def connect_refused(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True
