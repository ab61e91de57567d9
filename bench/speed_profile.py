"""Where one graceserve process spends a request's time: the hello app at c50, profiled.

The input for the optimisation work of issue 22.  Run from the repository root
(wrk and perf from ``bash bench/setup``; py-spy from the bench venv that
``python bench/speed.py`` sets up, or from PATH):

    python bench/speed_profile.py                  # 3 wrk runs of 10 s
    python bench/speed_profile.py --seconds 5 --connections 50 --top 25

One server process (``python -m graceserve speed_hello:app``), three runs of
``wrk -t2 -cN`` keep-alive on it, each observed one way, so that one
observer's cost does not tint the others' figures:

1. wrk alone: req/s, the baseline, and the server's user and system CPU per
   request (/proc).
2. ``perf stat -p`` on the server: all syscalls, futex, recvfrom, sendto and
   accept4, context switches, CPU time; per request.  A handful of events only:
   perf keeps a counter per event per thread, and more of them slow the server.
3. ``py-spy record --gil --nonblocking`` (pausing 50 threads per sample would
   change what is measured): stacks of the thread holding the GIL only,
   sampled at ``--rate`` Hz.  Each function's share of the samples (inclusive:
   anywhere on the stack; self: the innermost frame), also as microseconds of
   run 1's user CPU per request, says where the Python time goes.  A C call
   (``recv_into``, ``sendall``) shows as the Python line that made it, and
   includes taking the GIL back after it.

Loopback only; every run bounded; only the server started here is signalled.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import benchutil as bu

VENV_BIN = bu.BENCH / ".venv-speed" / "bin"


def py_spy() -> str | None:
    here = VENV_BIN / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def wrk_in_background(port: int, seconds: int, conns: int) -> tuple[threading.Thread, list[str]]:
    out: list[str] = []
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", f"http://{bu.HOST}:{port}/"]

    def run() -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        out.append(done.stdout)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def perf_stat(pid: int, port: int, seconds: int, conns: int) -> tuple[float, dict[str, float]]:
    """Requests served and perf's counts for the server over one wrk run."""
    load, out = wrk_in_background(port, seconds, conns)
    # Few events: perf keeps a counter per event per server thread (50 here), swapped at
    # every context switch; all ~330 syscall tracepoints slowed the server tenfold.
    traced = ["raw_syscalls:sys_enter"] + [
        f"syscalls:sys_enter_{name}" for name in ("futex", "recvfrom", "sendto", "accept4")
    ]
    events = ["-e", ",".join([*traced, "task-clock", "context-switches"])]
    cmd = ["perf", "stat", "-x,", *events, "-p", str(pid), "--", "sleep", str(seconds - 1)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    load.join()
    counts: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 3 and parts[0].replace(".", "", 1).isdigit():
            name = parts[2].removeprefix("syscalls:sys_enter_")
            counts["all syscalls" if name == "raw_syscalls:sys_enter" else name] = float(parts[0])
    rps = bu.parse_wrk(out[0] if out else "").rps
    return rps * (seconds - 1), counts


FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``file.py:func`` (the line dropped, so lines add up)."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{Path(m.group('file')).name}:{m.group('func')}"


def line_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``file.py:123 func``."""
    m = re.match(r"^(?P<func>.*?) \((?P<file>[^:()]*):(?P<line>\d+)\)$", frame.strip())
    if not m:
        return frame.strip()
    return f"{Path(m.group('file')).name}:{m.group('line')} {m.group('func')}"


def spy(
    tool: str, pid: int, port: int, seconds: int, conns: int, rate: int
) -> tuple[float, list[tuple[list[str], int]]]:
    """Requests served and py-spy's GIL-holder stacks (outermost first) over one wrk run."""
    load, out = wrk_in_background(port, seconds, conns)
    with bu.tempfile_dir() as tmp:
        raw = Path(tmp) / "stacks.txt"
        cmd = [
            tool,
            "record",
            "--pid",
            str(pid),
            "--gil",
            "--nonblocking",
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--duration",
            str(seconds - 1),
            "--output",
            str(raw),
        ]
        subprocess.run(cmd, capture_output=True, timeout=seconds + 60, check=False)
        load.join()
        stacks = []
        for line in raw.read_text().splitlines() if raw.exists() else []:
            frames, _, count = line.rpartition(" ")
            if frames and count.isdigit():
                stacks.append((frames.split(";"), int(count)))
    rps = bu.parse_wrk(out[0] if out else "").rps
    return rps * (seconds - 1), stacks


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far (all its threads; /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run (>= 3)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    args = parser.parse_args()
    if args.seconds < 3:
        parser.error("--seconds: at least 3")
    if shutil.which("wrk") is None:
        print("bench/speed_profile.py: wrk is not installed (bash bench/setup)", file=sys.stderr)
        sys.exit(1)
    print(bu.header("graceserve, one process, hello at c50: where a request's time goes", sys.argv))
    port = bu.free_port()
    cmd = [
        sys.executable,
        "-m",
        "graceserve",
        "speed_hello:app",
        "--bind",
        f"{bu.HOST}:{port}",
        "--log-level",
        "warning",
    ]
    srv = bu.Server("graceserve", cmd).start(port=port)
    try:
        pid = srv.proc.pid
        cpu0 = cpu_times(pid)
        base = bu.parse_wrk(
            subprocess.run(
                [
                    "wrk",
                    "-t2",
                    f"-c{args.connections}",
                    f"-d{args.seconds}s",
                    f"http://{bu.HOST}:{port}/",
                ],
                capture_output=True,
                text=True,
                timeout=args.seconds + 60,
                check=False,
            ).stdout
        )
        user, system = (t - t0 for t, t0 in zip(cpu_times(pid), cpu0, strict=True))
        user_us = 1e6 * user / max(1, base.requests)
        print(
            f"\n1. wrk alone: {base.rps:,.0f} req/s, {1e6 / base.rps:.1f} us per request "
            f"(wall); server CPU per request {user_us:.1f} us user + "
            f"{1e6 * system / max(1, base.requests):.1f} us system (/proc)"
        )
        if bu.perf_available():
            served, counts = perf_stat(pid, port, args.seconds, args.connections)
            cpu_ms = counts.pop("task-clock", float("nan"))
            switches = counts.pop("context-switches", float("nan"))
            print(
                f"\n2. perf stat -p (slows the server): {served:,.0f} requests; per request: CPU "
                f"{cpu_ms * 1e3 / served:.1f} us (all threads), {switches / served:.2f} context "
                f"switches, {counts.get('all syscalls', 0) / served:.2f} syscalls:"
            )
            busy = sorted(
                ((n, name) for name, n in counts.items() if n / served >= 0.005), reverse=True
            )
            rows = [[name, n / served, n] for n, name in busy]
            print(bu.table(["syscall", "per request", "total"], rows))
        else:
            print("\n2. perf stat: skipped (perf not available)")
        tool = py_spy()
        if tool is None:
            print("\n3. py-spy: skipped (not installed; python bench/speed.py sets it up)")
            return
        served, stacks = spy(tool, pid, port, args.seconds, args.connections, args.rate)
        total = sum(n for _, n in stacks)
        ticks = args.rate * (args.seconds - 1)
        us = user_us / max(1, total)  # a sample's share of the user CPU of one request
        print(
            f"\n3. py-spy --gil --nonblocking: {served:,.0f} requests, {total:,} samples with a "
            f"GIL holder in {ticks:,} ticks; us/request = the share of the samples times the "
            f"user CPU per request of run 1 ({user_us:.1f} us)"
        )
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        own_line: collections.Counter[str] = collections.Counter()
        for frames, n in stacks:
            for name in {frame_name(f) for f in frames}:
                inclusive[name] += n
            own[frame_name(frames[-1])] += n
            own_line[line_name(frames[-1])] += n
        for title, counter in (
            ("inclusive", inclusive),
            ("self (innermost frame)", own),
            ("self, by line", own_line),
        ):
            rows = [[name, n * us, 100 * n / total] for name, n in counter.most_common(args.top)]
            print(f"\n{title}:")
            print(bu.table(["function", "us/request", "% of GIL-held"], rows))
    finally:
        srv.stop(10)
        srv.close()


if __name__ == "__main__":
    main()
