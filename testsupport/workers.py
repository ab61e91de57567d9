"""Helpers for the worker tests: the app (answers name their pid), keep-alive load that
tells a broken request from a refused connect (``testsupport.load``, re-exported here),
and reading the supervisor's log.

A broken request is one that was sent and got no complete 200 answer (a reset, an
EOF, a timeout, a wrong status).  A connect that is refused after the stop began is
not a failure: the listener is closed then.  Every socket has a timeout; every loop
is bounded.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

from .load import IO_TIMEOUT, LOAD_LIMIT, Client, Load
from .process import ServerProcess
from .restarts import get

__all__ = [
    "APP",
    "IO_TIMEOUT",
    "LOAD_LIMIT",
    "Client",
    "Load",
    "connect_refused",
    "get",
    "served_by",
    "start_workers",
    "worker_pids",
    "write_app",
]

StartServer = Callable[..., ServerProcess]

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


def served_by(body: str) -> int:
    match = re.search(r"pid (\d+)", body)
    assert match is not None, body
    return int(match[1])


def worker_pids(server: ServerProcess) -> list[int]:
    """Pids of the workers the supervisor logged it started, in order."""
    return [int(m) for m in re.findall(r"started worker pid (\d+)", server.output)]


def connect_refused(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True
