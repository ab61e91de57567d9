"""A GracefulTCPServer in this process, with handlers the test gates, for drain tests.

Why this module exists: the server and drain-budget tests drive the same in-process
server and gated handlers; written once here.
Threading: the server runs serve_forever in its own thread; handlers run in the server's
threads and wait on events the test sets.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from typing import Any, cast

import pytest

from graceserve import GracefulTCPServer

__all__ = [
    "HOST",
    "MAX_LINE",
    "TIMEOUT",
    "Client",
    "Counter",
    "GatedHandler",
    "Harness",
    "ProbeServer",
    "address",
    "listener_closed",
    "probe",
]


HOST = "127.0.0.1"


TIMEOUT = 10.0  # seconds: every socket, every join, every wait on an event


MAX_LINE = 65536


class Counter:
    """A number other threads increase and the test waits on."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.value = 0

    def increment(self) -> None:
        with self._changed:
            self.value += 1
            self._changed.notify_all()

    def wait_for(self, target: int, timeout: float = TIMEOUT) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.value >= target, timeout):
                pytest.fail(f"counter stuck at {self.value}, expected {target}")


class ProbeServer(GracefulTCPServer):
    """GracefulTCPServer with what the tests need to watch and steer its handlers."""

    def __init__(self, handler: type[socketserver.BaseRequestHandler]) -> None:
        self.entered = Counter()  # handlers that reached their gate
        self.gate = threading.Event()  # default gate for every handler
        self.gates: dict[bytes, threading.Event] = {}  # per-request gates, by request line
        # Types only: keeping the exception would keep its traceback, whose frames
        # reference this server, a cycle that leaves sockets to the garbage collector.
        self.errors: list[type[BaseException] | None] = []  # what handle_error saw
        self.actions = Counter()  # service_actions calls: turns of the accept loop
        self.results: list[object] = []  # whatever handlers want to report
        self.input_timeout: float | None = None
        super().__init__((HOST, 0), handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append(sys.exc_info()[0])
        super().handle_error(request, client_address)

    def service_actions(self) -> None:
        self.actions.increment()

    def gate_for(self, line: bytes) -> threading.Event:
        return self.gates.get(line.strip(), self.gate)


def probe(handler: socketserver.BaseRequestHandler) -> ProbeServer:
    return cast(ProbeServer, handler.server)


def address(server: socketserver.TCPServer) -> tuple[str, int]:
    host, port = server.server_address[:2]
    return str(host), int(port)


def listener_closed(server: GracefulTCPServer) -> bool:
    """The drain has closed the listener: the flag is set only after the close."""
    closed = server.listener_closed
    if closed:
        assert server.socket.fileno() == -1
    return closed


class Client:
    """A client connection with a line reader; every read bounded by TIMEOUT."""

    def __init__(self, server: socketserver.TCPServer) -> None:
        self.sock = socket.create_connection(address(server), timeout=TIMEOUT)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.reader.readline(MAX_LINE)

    def rest(self) -> bytes:
        """Everything until EOF."""
        return self.reader.read()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Harness:
    """Servers, serving threads and clients of one test, all released at teardown."""

    def __init__(self) -> None:
        self.servers: list[GracefulTCPServer] = []
        self.threads: list[threading.Thread] = []
        self.clients: list[Client] = []

    def server(
        self,
        handler: type[socketserver.BaseRequestHandler],
        cls: type[ProbeServer] = ProbeServer,
        serve: bool = True,
        poll_interval: float = 0.5,
    ) -> ProbeServer:
        server = cls(handler)
        self.servers.append(server)
        if serve:
            self.serve(server, poll_interval)
        return server

    def serve(self, server: GracefulTCPServer, poll_interval: float = 0.5) -> threading.Thread:
        thread = threading.Thread(
            target=server.serve_forever, args=(poll_interval,), name="test-serve-forever"
        )
        thread.start()
        self.threads.append(thread)
        return thread

    def client(self, server: socketserver.TCPServer) -> Client:
        client = Client(server)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for server in self.servers:
            if isinstance(server, ProbeServer):
                server.gate.set()
                for gate in server.gates.values():
                    gate.set()
        for client in self.clients:
            client.close()
        for server in self.servers:
            server.close_timeout = TIMEOUT
            server.server_close()
        for thread in self.threads:
            thread.join(TIMEOUT)


class GatedHandler(socketserver.StreamRequestHandler):
    """Read one line, wait for its gate, answer ``done <line>`` and end."""

    def handle(self) -> None:
        server = probe(self)
        line = self.rfile.readline(MAX_LINE)
        server.entered.increment()
        server.gate_for(line).wait(TIMEOUT)
        self.wfile.write(b"done " + line)
