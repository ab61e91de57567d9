"""How graceserve holds up under abuse, in a few numbers.

Run from the repository root (no extra tools needed; ``prlimit`` is util-linux):

    python bench/abuse.py                       # everything
    python bench/abuse.py --only heads idle     # some of it

1. ``idle``: threads and RSS of the server with 1,000 concurrent idle keep-alive
   connections, for the demo handler and a WSGI app, after a small request and after
   one with a 48 KiB head (it went through each connection's read buffer);
2. ``heads``: RSS with 300 clients that each send a maximal request head (every
   field line at the size limit, as many as allowed) and then stall before its
   blank line, or stall in the body, or are answered and stay idle (``--heads``),
   for the demo handler (the stdlib's limits: 100 lines of 64 KiB) and a WSGI app
   (100 lines of 8 KiB); how many were refused (503) by the head budget;
3. ``silent``: how long a real request waits behind 200 silent clients with
   ``--max-connections 50 --idle-timeout 1`` (they are reaped 50 at a time);
4. ``fds``: CPU seconds per second the server burns while out of file descriptors
   (``prlimit --nofile=64:64``, 80 clients; target < 0.1).

Each runs ``python -m graceserve`` on 127.0.0.1, port 0, and stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # graceserve and testsupport from this checkout
    sys.path.insert(0, str(ROOT))

from testsupport.process import ServerProcess  # noqa: E402
from testsupport.procfs import cpu_seconds, status_field  # noqa: E402
from testsupport.rawhttp import get_request, read_response  # noqa: E402

IO_TIMEOUT = 15.0
BENCH = Path(__file__).resolve().parent
TARGETS = {"handler": None, "wsgi": "peers:wsgi_app"}  # the demo handler; a WSGI hello
SIOCOUTQ = 0x5411  # Linux: bytes in a socket's send queue not yet acknowledged


@contextlib.contextmanager
def started(
    args: list[str], prefix: list[str] | None = None, target: str | None = None
) -> Iterator[tuple[ServerProcess, tuple[str, int]]]:
    """``python -m graceserve [TARGET] ARGS``, ready: the process and its address; stopped
    with TERM.  ``target`` is imported from bench/ (``peers:wsgi_app``)."""
    server = ServerProcess([*([target] if target else []), *args], prefix=prefix, cwd=BENCH)
    code: int | None = None
    try:
        address = server.wait_ready(20.0)
        yield server, address
        server.send(signal.SIGTERM)
        code = server.proc.wait(30)
    finally:
        server.stop()
        code = server.proc.returncode if code is None else code
        if code != 0:
            print(f"  (server exited {code})")


def get(sock: socket.socket, close: bool = False) -> int:
    sock.sendall(get_request(close=close))
    return read_response(sock)[0]


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def idle_connections(kind: str, count: int = 1000, head_kib: int = 0) -> None:
    """RSS with ``count`` idle keep-alive connections; with ``head_kib``, their one request
    had a head that large (it went through the connection's read buffer)."""
    fill = b""
    for n in range(head_kib // 4):  # 4 KiB field lines, well inside every limit
        fill += b"X-Fill-%03d: " % n + b"f" * (4096 - 13) + b"\r\n"
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n" + fill + b"\r\n"
    with started(["--bind", "127.0.0.1:0"], target=TARGETS[kind]) as (server, address):
        threads0, rss0 = (status_field(server.proc.pid, f) for f in ("Threads", "VmRSS"))
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
                for _ in range(count)
            ]
            began = time.monotonic()
            for client in clients:
                client.sendall(request)
            for client in clients:
                response = http.client.HTTPResponse(client)
                response.begin()
                response.read()
                response.close()
            served = time.monotonic() - began
            threads, rss, hwm = (
                status_field(server.proc.pid, f) for f in ("Threads", "VmRSS", "VmHWM")
            )
        print(
            f"{kind}: {count} idle keep-alive connections (their request: "
            f"{len(request) / 1024:.0f} KiB): threads {threads0} -> {threads}, "
            f"RSS {rss0 / 1024:.1f} -> {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB, "
            f"{(rss - rss0) / count:.0f} KiB per connection); "
            f"first request on all of them served in {served:.2f} s"
        )


def unsent(sock: socket.socket) -> int:
    """Bytes ``sock`` has sent that its peer has not acknowledged (0 once all were read)."""
    try:
        return int.from_bytes(fcntl.ioctl(sock, SIOCOUTQ, b"\0" * 4)[:4], "little")
    except OSError:
        return 0


def maximal_head(field_size: int, fields: int) -> bytes:
    """A request line and ``fields`` field lines of ``field_size`` bytes each (CRLF not
    counted), without the blank line that would end the head."""
    lines = [b"GET / HTTP/1.1\r\n", b"Host: bench\r\n"]
    for n in range(fields - 1):
        name = b"X-Fill-%03d: " % n
        lines.append(name + b"a" * (field_size - len(name)) + b"\r\n")
    return b"".join(lines)


HOLDS = {
    "stalled": "stall before their blank line",
    "in-body": "end, and stall in a body (Content-Length: 1000, 10 bytes sent)",
    "answered": "end, are answered, and stay idle (keep-alive)",
}


def held_heads(kind: str, count: int = 300, how: str = "stalled") -> None:
    """RSS with ``count`` maximal request heads held open the way ``how`` says (HOLDS).

    "stalled" and "in-body" send from all clients at once; "answered" one client
    after the other (each head is complete, and read, before the next is sent).
    """
    field_size = 65536 if kind == "handler" else 8190  # the stdlib's / the WSGI default
    head = maximal_head(field_size, 99 if how == "in-body" else 100)
    if how == "in-body":  # the 100th field
        head += b"Content-Length: 1000\r\n\r\n" + b"b" * 10
    elif how == "answered":
        head += b"\r\n"
    args = ["--bind", "127.0.0.1:0", "--idle-timeout", "120"]
    with started(args, target=TARGETS[kind]) as (server, address):
        with socket.create_connection(address, timeout=IO_TIMEOUT) as warm:
            get(warm, close=True)
        rss0 = status_field(server.proc.pid, "VmRSS")
        refused = 0
        with contextlib.ExitStack() as stack:
            clients = []
            for _ in range(count):
                client = stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    client.sendall(head)  # a head refused half-way: counted below
                clients.append(client)
                if how == "answered":
                    with contextlib.suppress(OSError):
                        refused += read_response(client)[0] == 503
            deadline = time.monotonic() + 120
            while any(unsent(c) for c in clients) and time.monotonic() < deadline:
                time.sleep(0.05)  # until the server has read every byte sent (bounded)
            rss, hwm = (status_field(server.proc.pid, f) for f in ("VmRSS", "VmHWM"))
            for client in clients if how != "answered" else ():
                readable, _, _ = select.select([client], [], [], 0)
                if readable:
                    with contextlib.suppress(OSError):
                        refused += client.recv(64).startswith(b"HTTP/1.1 503")
        print(
            f"{kind}: {count} maximal heads ({len(head) / 1024:.0f} KiB, lines of "
            f"{field_size} B) that {HOLDS[how]}: RSS {rss0 / 1024:.1f} -> {rss / 1024:.1f} MiB "
            f"(peak {hwm / 1024:.1f} MiB, {(rss - rss0) / count:.0f} KiB per connection); "
            f"{refused} answered 503"
        )


def behind_silent_clients(silent: int = 200) -> None:
    args = ["--bind", "127.0.0.1:0", "--max-connections", "50", "--idle-timeout", "1"]
    with started(args) as (_server, address), contextlib.ExitStack() as stack:
        for _ in range(silent):
            stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
        began = time.monotonic()
        with socket.create_connection(address, timeout=IO_TIMEOUT) as client:
            status = get(client, close=True)
        waited = time.monotonic() - began
        print(
            f"real request behind {silent} silent clients "
            f"(--max-connections 50 --idle-timeout 1): {status} after {waited:.2f} s"
        )


def out_of_descriptors(window: float = 3.0) -> None:
    limited = ["prlimit", "--nofile=64:64"]
    with started(["--bind", "127.0.0.1:0"], prefix=limited) as (server, address):
        with contextlib.ExitStack() as stack:
            for _ in range(80):
                stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
            server.wait_for_line("accept\\(\\) failed", 20.0)
            cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
            time.sleep(window)  # the measurement window itself
            cpu, elapsed = cpu_seconds(server.proc.pid) - cpu0, time.monotonic() - t0
            failures = sum("accept() failed" in line for line in server.lines)
        began = time.monotonic()
        with socket.create_connection(address, timeout=IO_TIMEOUT) as client:
            status = get(client, close=True)
        recovered = time.monotonic() - began
        print(
            f"out of fds (nofile 64, 80 clients): {cpu / elapsed:.3f} CPU s/s over {elapsed:.1f} s "
            f"(target < 0.1), {failures} accept-failure log line(s); "
            f"after the clients left: {status} in {recovered:.3f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parts = ("idle", "heads", "silent", "fds")
    parser.add_argument("--only", nargs="+", choices=parts, default=list(parts))
    parser.add_argument("--clients", type=int, default=300, help="held heads per target")
    parser.add_argument("--heads", nargs="+", choices=list(HOLDS), default=list(HOLDS))
    args = parser.parse_args()
    raise_fd_limit(4096)
    if "idle" in args.only:
        for kind in TARGETS:
            idle_connections(kind)
            idle_connections(kind, head_kib=48)
    if "heads" in args.only:
        for how in args.heads:
            for kind in TARGETS:
                held_heads(kind, args.clients, how)
    if "silent" in args.only:
        behind_silent_clients()
    if "fds" in args.only:
        out_of_descriptors()


if __name__ == "__main__":
    main()
