"""How graceserve holds up under abuse, in three numbers.

Run from the repository root (no extra tools needed; ``prlimit`` is util-linux):

    python bench/abuse.py

1. threads and RSS of the server with 1,000 concurrent idle keep-alive connections;
2. how long a real request waits behind 200 silent clients with
   ``--max-connections 50 --idle-timeout 1`` (they are reaped 50 at a time);
3. CPU seconds per second the server burns while out of file descriptors
   (``prlimit --nofile=64:64``, 80 clients; target < 0.1).

Each runs ``python -m graceserve`` on 127.0.0.1, port 0, and stops it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import http.client
import resource
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


@contextlib.contextmanager
def started(
    args: list[str], prefix: list[str] | None = None
) -> Iterator[tuple[ServerProcess, tuple[str, int]]]:
    """``python -m graceserve ARGS``, ready: the process and its address; stopped with TERM."""
    server = ServerProcess(args, prefix=prefix)
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


def idle_connections(count: int = 1000) -> None:
    with started(["--bind", "127.0.0.1:0"]) as (server, address):
        threads0, rss0 = (status_field(server.proc.pid, f) for f in ("Threads", "VmRSS"))
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
                for _ in range(count)
            ]
            began = time.monotonic()
            for client in clients:
                client.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
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
            f"{count} idle keep-alive connections: threads {threads0} -> {threads}, "
            f"RSS {rss0 / 1024:.1f} -> {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB, "
            f"{(rss - rss0) / count:.0f} KiB per connection); "
            f"first request on all of them served in {served:.2f} s"
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
    raise_fd_limit(4096)
    idle_connections()
    behind_silent_clients()
    out_of_descriptors()


if __name__ == "__main__":
    main()
