"""SIGTERM handling of the CLI (``python -m graceserve``), next to a naive stdlib server.

Run from the repository root (stdlib only, nothing to install):

    python bench/signals.py            # full run (~2.5 min)
    python bench/signals.py --quick    # short run (~20 s)

What it measures; each run alternates graceserve and the stdlib peer
(``bench/peers.py stdlib``: ThreadingHTTPServer whose SIGTERM handler starts
``shutdown()`` in a thread, then ``server_close()``):

1. Idle SIGTERM to process exit.  Start the server on port 0, wait for its
   readiness line on stderr and then a random 0-0.5 s (the stdlib's shutdown
   polls every 0.5 s from serve_forever's start, so the phase matters; each
   round uses one phase for all), send SIGTERM, time until the process has exited
   (woken by a pidfd, not polled).  Median / p90 / max over N runs; target for
   graceserve < 100 ms.  A third process, "python floor", imports graceserve
   and exits on SIGTERM without serving anything: the interpreter's own exit.
2. SIGTERM under 20 in-flight ``GET /slow?seconds=2`` requests (keep-alive
   HTTP/1.1 clients, one thread each, all requests sent and given 0.3 s to
   reach the handlers).  Right after SIGTERM the bench runs a tight, bounded
   loop of connect attempts (each with a 100 ms timeout, 0.2 ms apart) and
   records when the first one is refused.  Target for graceserve < 20 ms.
   graceserve runs with ``--log-level debug``, so its "listener closed" line
   gives a second, passive measure (1 ms resolution); graceserve also runs
   once per round without probes, since probe connects that arrive during the
   drain's backlog sweep are themselves swept.  Also reported: how many of the
   20 got a 200, what the others saw, how many probes were accepted after
   SIGTERM, the exit code and the time from SIGTERM to exit.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import http.client
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from typing import TypedDict

import benchutil as bu

IN_FLIGHT = 20
SLOW = 2.0
PROBE_TIMEOUT = 0.1
PROBE_GAP = 0.0002
PROBE_LIMIT_S = 5.0


# The floor: a Python process that has imported graceserve and exits on SIGTERM
# (SystemExit from the handler), so that interpreter start-up state and teardown
# are the same as graceserve's but nothing is drained or closed.
FLOOR = (
    "import signal, sys, graceserve\n"
    "def stop(*_): raise SystemExit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('listening on http://127.0.0.1:1', file=sys.stderr, flush=True)\n"
    "while True: signal.pause()\n"
)


def command(kind: str) -> list[str]:
    if kind == "graceserve":
        return [sys.executable, "-m", "graceserve", "--bind", f"{bu.HOST}:0"]
    if kind == "python floor":
        return [sys.executable, "-c", FLOOR]
    return [sys.executable, str(bu.BENCH / "peers.py"), "stdlib", "--port", "0"]


KINDS = ("graceserve", "stdlib-naive")
IDLE_KINDS = ("graceserve", "stdlib-naive", "python floor")


# -- 1. idle ----------------------------------------------------------------


def idle_run(kind: str, phase: float) -> tuple[float, int | None]:
    srv = bu.Server(kind, command(kind)).start(ready_line=True)
    try:
        time.sleep(phase)
        t0 = time.perf_counter()
        srv.signal(signal.SIGTERM)
        code = srv.wait(10)
        elapsed = time.perf_counter() - t0
    finally:
        srv.kill()
    return elapsed, code


def bench_idle(runs: int) -> str:
    res: dict[str, list[tuple[float, int | None]]] = {k: [] for k in IDLE_KINDS}
    rng = random.Random(1)
    for r in range(runs):
        shift = r % len(IDLE_KINDS)
        phase = rng.uniform(0, 0.5)  # the same phase for each kind in a round
        for kind in IDLE_KINDS[shift:] + IDLE_KINDS[:shift]:
            res[kind].append(idle_run(kind, phase))
    rows = []
    medians: dict[str, float] = {}
    for kind in IDLE_KINDS:
        ms = [x[0] * 1e3 for x in res[kind]]
        codes = Counter(x[1] for x in res[kind])
        medians[kind] = bu.median(ms)
        rows.append(
            [
                kind,
                medians[kind],
                bu.pct(ms, 90),
                min(ms),
                max(ms),
                ", ".join(f"{c}x{n}" for c, n in sorted(codes.items(), key=str)),
            ]
        )
    ratio = medians[IDLE_KINDS[1]] / medians[IDLE_KINDS[0]]
    return "\n".join(
        [
            bu.table(
                ["idle server", "SIGTERM->exit med ms", "p90", "min", "max", "exit codes"],
                rows,
                title=f"1. idle SIGTERM to process exit ({runs} runs each, order rotated; "
                "target < 100 ms)",
            ),
            "",
            f"stdlib-naive / graceserve median: {ratio:.1f}x; 'python floor' is a process that has "
            "imported graceserve and raises SystemExit on SIGTERM: interpreter teardown alone.",
        ]
    )


# -- 2. in flight ----------------------------------------------------------


def slow_client(port: int, sent: threading.Barrier, out: list[str]) -> None:
    conn = http.client.HTTPConnection(bu.HOST, port, timeout=SLOW + 10)
    try:
        conn.request("GET", f"/slow?seconds={SLOW:g}")
        sent.wait(5)
        resp = conn.getresponse()
        resp.read()
        out.append(str(resp.status))
    except threading.BrokenBarrierError:
        out.append("barrier")
    except Exception as exc:
        out.append(type(exc).__name__)
    finally:
        conn.close()


def probe_until_refused(port: int) -> tuple[float | None, int, int]:
    """Connect repeatedly until refused: (seconds to refusal, accepted, timed out)."""
    t0 = time.perf_counter()
    accepted = timed_out = 0
    while time.perf_counter() - t0 < PROBE_LIMIT_S:
        with socket.socket() as sock:
            sock.settimeout(PROBE_TIMEOUT)
            try:
                err = sock.connect_ex((bu.HOST, port))
            except TimeoutError:
                err = errno.ETIMEDOUT
        if err == errno.ECONNREFUSED:
            return time.perf_counter() - t0, accepted, timed_out
        if err == 0:
            accepted += 1
        elif err in (errno.ETIMEDOUT, errno.EAGAIN, errno.EINPROGRESS):
            timed_out += 1
        time.sleep(PROBE_GAP)
    return None, accepted, timed_out


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) ")


def logged_at(lines: list[str], text: str) -> float | None:
    """Wall-clock time (1 ms resolution) of the first log line containing ``text``."""
    for line in lines:
        m = _LOG_TIME.match(line)
        if m and text in line:
            return datetime.datetime.fromisoformat(m.group(1)).timestamp()
    return None


class InflightRun(TypedDict):
    """One run of part 2."""

    closed_ms: float | None
    closed_log_ms: float | None
    swept: int | None
    accepted: int | None
    timed_out: int | None
    outcomes: Counter[str]
    code: int | None
    exit_s: float
    summary: str


def inflight_run(kind: str, probe: bool) -> InflightRun:
    cmd = command(kind) + (["--log-level", "debug"] if kind == "graceserve" else [])
    srv = bu.Server(kind, cmd).start(ready_line=True)
    results: list[str] = []
    sent = threading.Barrier(IN_FLIGHT + 1)
    clients = [
        threading.Thread(target=slow_client, args=(srv.port, sent, results))
        for _ in range(IN_FLIGHT)
    ]
    closed_after, accepted, timed_out = None, 0, 0
    try:
        for t in clients:
            t.start()
        sent.wait(10)
        time.sleep(0.3)  # let the server read every request
        wall, t0 = time.time(), time.perf_counter()
        srv.signal(signal.SIGTERM)
        if probe:
            closed_after, accepted, timed_out = probe_until_refused(srv.port)
        code = srv.wait(SLOW + 15)
        exit_after = time.perf_counter() - t0
        for t in clients:
            t.join(SLOW + 15)
    finally:
        srv.kill()
    summary = next((line for line in srv.lines if "stopped:" in line), "")
    closed_log = logged_at(srv.lines, "listener closed")
    backlog = re.search(r"(\d+) of them from the backlog", "\n".join(srv.lines))
    return {
        "closed_ms": None if closed_after is None else closed_after * 1e3,
        # The log's clock is truncated to the millisecond: + 1 ms gives an upper bound.
        "closed_log_ms": None if closed_log is None else (closed_log + 0.001 - wall) * 1e3,
        "swept": int(backlog.group(1)) if backlog else None,
        "accepted": accepted if probe else None,
        "timed_out": timed_out if probe else None,
        "outcomes": Counter(results),
        "code": code,
        "exit_s": exit_after,
        "summary": summary.split("INFO ", 1)[-1],
    }


VARIANTS = (("graceserve", True), ("stdlib-naive", True), ("graceserve", False))


def _label(kind: str, probe: bool) -> str:
    return f"{kind}{'' if probe else ' (no probes)'}"


def _ms(value: object) -> object:
    return "-" if value is None else value


def bench_inflight(runs: int) -> str:
    res: dict[str, list[InflightRun]] = {_label(*v): [] for v in VARIANTS}
    for r in range(runs):
        shift = r % len(VARIANTS)
        for kind, probe in VARIANTS[shift:] + VARIANTS[:shift]:
            run = inflight_run(kind, probe)
            res[_label(kind, probe)].append(run)
            bu.say(f"  run {r + 1}/{runs} {_label(kind, probe)}: {run}")
    rows = []
    for label, runs_ in res.items():
        for i, run in enumerate(runs_, 1):
            outcomes = Counter(run["outcomes"])
            ok = outcomes.pop("200", 0)
            rows.append(
                [
                    f"{label} #{i}",
                    "never"
                    if run["accepted"] is not None and run["closed_ms"] is None
                    else _ms(run["closed_ms"]),
                    _ms(run["closed_log_ms"]),
                    _ms(run["accepted"]),
                    _ms(run["swept"]),
                    f"{ok}/{IN_FLIGHT}",
                    ", ".join(f"{k} x{n}" for k, n in outcomes.items()) or "-",
                    run["code"],
                    run["exit_s"],
                ]
            )
    med_rows = []
    for label, runs_ in res.items():
        refused = [x["closed_ms"] for x in runs_ if x["closed_ms"] is not None]
        logged = [x["closed_log_ms"] for x in runs_ if x["closed_log_ms"] is not None]
        exits = [x["exit_s"] for x in runs_]
        med_rows.append(
            [label, bu.median(refused), bu.pct(refused, 90), bu.median(logged), bu.pct(logged, 90),
             bu.median(exits)]
        )  # fmt: skip
    return "\n".join(
        [
            bu.table(
                [
                    "run",
                    "refused after ms",
                    "closed by (log) ms",
                    "probes accepted",
                    "swept",
                    "200s",
                    "other outcomes",
                    "exit code",
                    "SIGTERM->exit s",
                ],
                rows,
                title=f"2. SIGTERM under {IN_FLIGHT} in-flight GET /slow?seconds={SLOW:g} "
                f"({runs} runs each, order rotated)",
            ),
            "",
            "refused after: first connect refused in the bench's tight probe loop (connect "
            f"attempts {PROBE_GAP * 1e3:g} ms apart, each closed at once);",
            "closed by (log): time of graceserve's debug line 'listener closed' (truncated to the "
            "ms by logging) + 1 ms, minus the SIGTERM send time: an upper bound;",
            "swept: connections accepted by the drain's backlog sweep (from that line); "
            "probes accepted: probe connects that succeeded after SIGTERM.",
            "",
            bu.table(
                [
                    "server",
                    "refused med ms",
                    "p90",
                    "closed by (log) med ms",
                    "p90",
                    "SIGTERM->exit med s",
                ],
                med_rows,
                title="medians (target for graceserve: listener closed < 20 ms, "
                f"{IN_FLIGHT}/{IN_FLIGHT} 200, exit 0)",
            ),
            "",
            "graceserve's own summary lines:",
            *(
                f"  {label} #{i}: {x['summary']}"
                for label, runs_ in res.items()
                if label.startswith("graceserve")
                for i, x in enumerate(runs_, 1)
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    args = parser.parse_args()
    idle_runs, inflight_runs = (5, 1) if args.quick else (20, 5)
    os.environ.pop("GRACESERVE_BIND", None)
    print(bu.header("bench/signals.py: SIGTERM handling of python -m graceserve", sys.argv))
    print()
    bu.say("1. idle SIGTERM to exit ...")
    print(bench_idle(idle_runs))
    print()
    bu.say("2. SIGTERM under in-flight requests ...")
    print(bench_inflight(inflight_runs))


if __name__ == "__main__":
    main()
