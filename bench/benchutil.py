"""Helpers shared by the benchmark scripts in bench/ (not a benchmark itself).

Statistics (median, p90), a plain-text table printer, a run header (Python,
git revision, load), server processes started in their own session and
stopped by process group (on ``testsupport``, shared with the tests), an
HTTP readiness probe, and a wrk runner/parser.  Importing it puts the
repository root on ``sys.path``, so that every script imports graceserve
and testsupport from this checkout.

Rules kept by every script: loopback only (127.0.0.1), every load bounded in
time and count, only processes started here are signalled (by pid or process
group, never by name).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # graceserve and testsupport, for ``python bench/x.py``
    sys.path.insert(0, str(ROOT))

import testsupport as support  # noqa: E402
from graceserve.process.readiness import parse_ready  # noqa: E402
from testsupport import procfs  # noqa: E402

HOST = "127.0.0.1"
MAX_LINES = 100_000


# -- statistics -----------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median, NaN for an empty sequence."""
    return statistics.median(values) if values else math.nan


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0-100), NaN for an empty sequence."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean, NaN for an empty sequence."""
    return statistics.fmean(values) if values else math.nan


# -- output ---------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()

    out = [title] if title else []
    out.append(line(cells[0]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown (GitHub) table, numbers formatted like ``table``, right-aligned but the first."""
    out = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "|" + "|".join([":---", *["---:"] * (len(headers) - 1)]) + "|",
    ]
    out += ["| " + " | ".join(_cell(v).replace("|", "/") for v in row) + " |" for row in rows]
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def header(title: str, argv: Sequence[str]) -> str:
    """What was run, where and when: for the top of every report."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = "?"
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = ["?"]
    return "\n".join(
        [
            f"== {title}",
            f"command: python {' '.join(argv)}",
            f"python {platform.python_version()} | git {rev or '?'} | "
            f"{os.cpu_count()} cpus | load {' '.join(load)} | {time.strftime('%Y-%m-%d %H:%M:%S')}",
        ]
    )


def say(*parts: object) -> None:
    """Print now (progress goes to stderr so that stdout is only the report)."""
    print(*parts, file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for a server process: this repository, then bench/, first on the path."""
    return support.child_env({"PYTHONUNBUFFERED": "1"}, path=[BENCH])


@dataclass
class Server:
    """A server process in its own session (``testsupport.ChildProcess``), not started yet.

    A thread reads stderr all the time: a server that logs a lot (waitress's
    queue-depth warnings, the stdlib's tracebacks) must never block on a full
    pipe, or it stops serving.
    """

    name: str
    cmd: list[str]
    port: int = 0
    child: support.ChildProcess | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The process (once started)."""
        assert self.child is not None
        return self.child.proc

    @property
    def lines(self) -> list[str]:
        """Its stderr lines so far (at most MAX_LINES are kept)."""
        return [] if self.child is None else self.child.lines

    def start(self, port: int = 0, ready_line: bool = False, timeout: float = 15.0) -> Server:
        """Start; wait for the readiness line on stderr, or for ``GET /`` to answer."""
        self.child = support.ChildProcess(self.cmd, env=child_env(), cwd=ROOT, max_lines=MAX_LINES)
        deadline = time.monotonic() + timeout
        if ready_line:
            while True:
                for line in self.child.new_lines(max(0.0, deadline - time.monotonic())):
                    ready = parse_ready(line)
                    if ready is not None and ready.port is not None:
                        self.port = ready.port
                        return self
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{self.name} did not start: {self.lines[-5:]}")
        self.port = port
        while not http_ok(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not start: {self.lines[-5:]}")
            time.sleep(0.05)
        return self

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server process itself (not its group)."""
        assert self.child is not None
        self.child.send(signum)

    def wait(self, timeout: float) -> int | None:
        """Wait for exit; the exit code, or None if still running (woken by a pidfd)."""
        assert self.child is not None
        return self.child.exited_within(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it if it is still there."""
        if self.child is None:
            return None
        if self.proc.poll() is None:
            self.child.kill_group(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the process group (only ours: it has its own session)."""
        if self.child is None:
            return
        self.child.kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def close(self) -> None:
        """Kill what is left of the group, then release the stderr pipe (no ResourceWarning)."""
        if self.child is not None:
            self.child.stop()

    def cpu_seconds(self) -> float:
        """User+system CPU time so far of the server process and its descendants (Linux /proc).

        Descendants count while they live (gunicorn's worker), so that a
        pre-forking server is measured like a single-process one.
        """
        return procfs.cpu_seconds(self.proc.pid, descendants=True)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_ok(port: int, path: str = "/", timeout: float = 1.0) -> bool:
    """Whether ``GET path`` answers 200."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


# -- wrk -------------------------------------------------------------------


@dataclass
class WrkResult:
    """What wrk printed, parsed."""

    requests: int = 0
    rps: float = math.nan
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    non2xx: int = 0
    latency: dict[str, float] = field(default_factory=dict)  # "50%" -> ms
    raw: str = ""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk 4.x output (with or without ``--latency``)."""
    res = WrkResult(raw=text)
    if m := re.search(r"(\d+) requests in", text):
        res.requests = int(m.group(1))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        res.rps = float(m.group(1))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        res.connect, res.read, res.write, res.timeout = (int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        res.non2xx = int(m.group(1))
    if "Latency Distribution" in text:
        dist = text.split("Latency Distribution", 1)[1]
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", dist, re.MULTILINE):
            res.latency[m.group(1) + "%"] = float(m.group(2)) * _UNITS[m.group(3)]
    return res


def wrk_command(port: int, duration: float, path: str = "/", latency: bool = False) -> list[str]:
    """``wrk -t2 -c50 -dNs [--latency] http://127.0.0.1:PORT/path`` (wrk takes whole seconds)."""
    cmd = ["wrk", "-t2", "-c50", f"-d{max(1, round(duration))}s"]
    if latency:
        cmd.append("--latency")
    return [*cmd, f"http://{HOST}:{port}{path}"]


# -- perf: what wrk's failed reads and writes really were ------------------------
#
# wrk 4.1 connects without blocking and never checks SO_ERROR, so a connect
# refused after the listener closed surfaces as a failed write (ECONNREFUSED)
# and is counted as a *write* error, not a connect error.  ``perf record`` with
# in-kernel filters records only wrk's failed reads/writes (and EOF reads), at
# no measurable cost to wrk, with CLOCK_MONOTONIC timestamps comparable to
# ``time.monotonic()``.


def perf_available() -> bool:
    """Whether ``perf record`` with syscall tracepoints works here (root, tracefs)."""
    try:
        with tempfile_dir() as tmp:
            done = subprocess.run(
                [*perf_prefix(str(Path(tmp) / "probe.data")), "true"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@contextlib.contextmanager
def tempfile_dir() -> Iterator[str]:
    """A temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="graceserve-bench-") as tmp:
        yield tmp


def perf_prefix(data: str) -> list[str]:
    """Prefix for a command: record its failed read/write syscalls (EAGAIN excluded)."""
    return [
        "perf",
        "record",
        "-q",
        "-k",
        "CLOCK_MONOTONIC",
        "-o",
        data,
        "-e",
        "syscalls:sys_exit_write",
        "--filter",
        "ret < 0 && ret != -11",
        "-e",
        "syscalls:sys_exit_read",
        "--filter",
        "ret <= 0 && ret != -11",
        "--",
    ]


_PERF_LINE = re.compile(r"\s(\d+\.\d+):\s+syscalls:sys_exit_(\w+):\s+(0x[0-9a-f]+)")


def perf_events(data: str) -> list[tuple[float, str, str]]:
    """(monotonic time, "read"/"write", "EOF" or errno name) for each recorded event."""
    out = subprocess.run(
        ["perf", "script", "-i", data], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    events = []
    for m in _PERF_LINE.finditer(out):
        ret = int(m.group(3), 16)
        if ret >= 1 << 63:
            ret -= 1 << 64
        what = "EOF" if ret == 0 else errno.errorcode.get(-ret, str(ret))
        events.append((float(m.group(1)), m.group(2), what))
    return events


def loss_counts(
    out: str, events: Sequence[tuple[float, str, str]], use_perf: bool
) -> dict[str, object]:
    """What a client under load saw of a signal, from wrk's output ``out``: requests, each
    kind of error, the broken total, and refused connects.  With perf's ``events``
    (``use_perf``), a write that failed with ECONNREFUSED is a refused connect, not a
    broken request; without perf the refused count is wrk's connect errors "+?"."""
    res = parse_wrk(out)
    refused = sum(1 for _, _, what in events if what == "ECONNREFUSED")
    bad_writes = max(res.write - refused, 0) if use_perf else res.write
    return {
        "requests": res.requests,
        "read err": res.read,
        "write err": bad_writes,
        "timeouts": res.timeout,
        "non-2xx": res.non2xx,
        "broken": res.read + bad_writes + res.timeout + res.non2xx,
        "refused": refused + res.connect if use_perf else f"{res.connect}+?",
    }
