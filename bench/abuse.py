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
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
IO_TIMEOUT = 15.0


class Server:
    """``python -m graceserve ARGS`` with its stderr collected line by line."""

    def __init__(self, args: list[str], prefix: list[str] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        for key in [k for k in env if k.startswith("GRACESERVE_")]:
            del env[key]
        command = [*(prefix or []), sys.executable, "-m", "graceserve", *args]
        self.proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.wait_for(READY)[1])

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 20.0) -> re.Match[str]:
        """The first stderr line matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    raise RuntimeError(f"no {regex.pattern!r} in:\n" + "\n".join(self.lines))
                self._changed.wait(min(remaining, 0.5))

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def status(self, field: str) -> int:
        """A numeric field of /proc/PID/status (Threads, VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self._reader.join(5)
            assert self.proc.stderr is not None
            self.proc.stderr.close()


@contextlib.contextmanager
def started(args: list[str], prefix: list[str] | None = None) -> Iterator[Server]:
    server = Server(args, prefix)
    try:
        yield server
    finally:
        code = server.stop()
        if code != 0:
            print(f"  (server exited {code})")


def get(sock: socket.socket, close: bool = False) -> int:
    extra = "Connection: close\r\n" if close else ""
    sock.sendall(f"GET / HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode())
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        response.read()
        return response.status
    finally:
        response.close()


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def idle_connections(count: int = 1000) -> None:
    with started(["--bind", "127.0.0.1:0"]) as server:
        threads0, rss0 = server.status("Threads"), server.status("VmRSS")
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(socket.create_connection(server.address, timeout=IO_TIMEOUT))
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
            threads, rss, hwm = (server.status(f) for f in ("Threads", "VmRSS", "VmHWM"))
        print(
            f"{count} idle keep-alive connections: threads {threads0} -> {threads}, "
            f"RSS {rss0 / 1024:.1f} -> {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB, "
            f"{(rss - rss0) / count:.0f} KiB per connection); "
            f"first request on all of them served in {served:.2f} s"
        )


def behind_silent_clients(silent: int = 200) -> None:
    args = ["--bind", "127.0.0.1:0", "--max-connections", "50", "--idle-timeout", "1"]
    with started(args) as server, contextlib.ExitStack() as stack:
        for _ in range(silent):
            stack.enter_context(socket.create_connection(server.address, timeout=IO_TIMEOUT))
        began = time.monotonic()
        with socket.create_connection(server.address, timeout=IO_TIMEOUT) as client:
            status = get(client, close=True)
        waited = time.monotonic() - began
        print(
            f"real request behind {silent} silent clients "
            f"(--max-connections 50 --idle-timeout 1): {status} after {waited:.2f} s"
        )


def out_of_descriptors(window: float = 3.0) -> None:
    with started(["--bind", "127.0.0.1:0"], prefix=["prlimit", "--nofile=64:64"]) as server:
        with contextlib.ExitStack() as stack:
            for _ in range(80):
                stack.enter_context(socket.create_connection(server.address, timeout=IO_TIMEOUT))
            server.wait_for("accept\\(\\) failed")
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            time.sleep(window)  # the measurement window itself
            cpu, elapsed = server.cpu_seconds() - cpu0, time.monotonic() - t0
            failures = sum("accept() failed" in line for line in server.lines)
        began = time.monotonic()
        with socket.create_connection(server.address, timeout=IO_TIMEOUT) as client:
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
