"""The client side of a CPU-per-request bench: requests one at a time on one connection.

Shared by bench/http_cpu.py and bench/wsgi_cpu.py.  Imports nothing of
graceserve's: bench/wsgi_cpu.py's children import graceserve from the tree
being measured, so whatever they share must not pull in another copy.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


def exchange(client: socket.socket, request: bytes, requests: int) -> None:
    """Send ``request`` ``requests`` times, each after the previous response was read whole
    (one header block and a Content-Length body: ping-pong, as wrk's one connection)."""
    buf = b""
    for _ in range(requests):
        client.sendall(request)
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    buf = rest[length:]
                    break
            chunk = client.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk


def drive(serve: Callable[[], None], client: socket.socket, request: bytes, requests: int) -> None:
    """Run ``serve`` (the server's side of ``client``'s connection, until it reads EOF) in
    a thread while ``exchange`` sends ``requests`` requests; then close ``client``."""
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        exchange(client, request, requests)
        client.shutdown(socket.SHUT_WR)  # the server's side reads EOF and returns
    finally:
        thread.join(10)
        client.close()
