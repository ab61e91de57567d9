"""Workers: WSGI hello throughput with --workers 2 against the pre-forking peers; RSS; stop latency.

Setup once (root): ``bash bench/setup``.  Run from the repository root:

    python bench/workers.py             # 3 rounds of 5 s (~3 min)
    python bench/workers.py --quick     # 1 round of 3 s

(a) Throughput: the same WSGI app (``bench/peers.py``'s ``wsgi_app``) under
    ``wrk -t2 -c50`` keep-alive, served by graceserve ``--workers 2`` and
    ``--workers 1``, gunicorn sync ``-w 5``, gunicorn gthread ``-w 2 --threads
    16`` and waitress (16 threads).  Every server runs for the whole benchmark;
    each round visits each one, the order rotating; medians and graceserve
    ``--workers 2``'s ratio to each.  The machine is shared: quote ratios.
(b) Memory: the resident set of graceserve's supervisor and of each worker,
    idle after the run (``VmRSS``).
(c) Stop latency: ``--workers N`` idle, then under wrk load; seconds from
    SIGTERM to the supervisor's exit, and its exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import benchutil as bu
import http_load

from testsupport import procfs

PY = sys.executable
PEERS = str(bu.BENCH / "peers.py")
APP = "peers:wsgi_app"


def graceserve(workers: int):  # type: ignore[no-untyped-def]
    return lambda p: [
        PY, "-m", "graceserve", APP, "--bind", f"{bu.HOST}:{p}", "--log-level", "warning",
        "--workers", str(workers),
    ]  # fmt: skip


def gunicorn(worker: str, processes: int, threads: int = 0):  # type: ignore[no-untyped-def]
    def cmd(port: int) -> list[str]:
        base = [PY, "-m", "gunicorn", "--chdir", str(bu.BENCH), "-w", str(processes), "-k", worker]
        if threads:
            base += ["--threads", str(threads)]
        return [*base, "-b", f"{bu.HOST}:{port}", "--log-level", "warning", APP]

    return cmd


SPECS = [
    ("graceserve --workers 2", graceserve(2)),
    ("graceserve --workers 1", graceserve(1)),
    ("gunicorn sync -w 5", gunicorn("sync", 5)),
    ("gunicorn gthread -w 2 --threads 16", gunicorn("gthread", 2, 16)),
    ("waitress threads=16", lambda p: [PY, PEERS, "waitress", "--threads", "16", "--port", str(p)]),
]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def rss_mib(pid: int) -> float:
    try:
        return procfs.status_field(pid, "VmRSS") / 1024
    except (OSError, ValueError, KeyError):
        return float("nan")


def throughput(rounds: int, duration: float) -> tuple[str, str]:
    started = []
    for name, make in SPECS:
        port = bu.free_port()
        server = bu.Server(name, make(port))
        server.port = port
        started.append(server)
    results: dict[str, list[float]] = {s.name: [] for s in started}
    memory = ""
    try:
        for srv in started:
            srv.start(port=srv.port, timeout=30)
        for srv in started:
            http_load.run_wrk(srv.port, 1)  # warm-up
        for r in range(rounds):
            shift = r % len(started)
            for srv in started[shift:] + started[:shift]:
                res = http_load.run_wrk(srv.port, duration)
                results[srv.name].append(res.rps)
                bu.say(f"  round {r + 1}/{rounds} {srv.name}: {res.rps:,.0f} req/s")
        ours = started[0]
        workers = children(ours.proc.pid)
        memory = (
            f"(b) RSS, idle after the run: supervisor {rss_mib(ours.proc.pid):.1f} MiB, "
            + ", ".join(f"worker {rss_mib(w):.1f} MiB" for w in workers)
        )
    finally:
        for srv in started:
            srv.stop(10)
            srv.close()
    med = {name: bu.median(v) for name, v in results.items()}
    ours_name = started[0].name
    rows = [
        [name, med[name], min(v), max(v), f"{med[ours_name] / med[name]:.2f}"]
        for name, v in results.items()
    ]
    table = bu.table(
        ["server (WSGI hello)", "req/s med", "min", "max", "--workers 2 / it"], rows,
        title=f"(a) wrk -t2 -c50 -d{round(duration)}s keep-alive, {rounds} rounds, rotated",
    )  # fmt: skip
    return table, memory


def stop_latency(counts: list[int]) -> str:
    rows = []
    for workers in counts:
        for loaded in (False, True):
            port = bu.free_port()
            srv = bu.Server(f"--workers {workers}", graceserve(workers)(port))
            srv.start(port=port, timeout=30)
            wrk = None
            try:
                if loaded:
                    wrk = subprocess.Popen(
                        bu.wrk_command(port, 10), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, start_new_session=True,
                    )  # fmt: skip
                    time.sleep(2.0)  # the load is running (a benchmark's pace, not a test)
                sent = time.monotonic()
                srv.signal(signal.SIGTERM)
                code = srv.wait(30)
                elapsed = time.monotonic() - sent
            finally:
                if wrk is not None and wrk.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        wrk.kill()
                    wrk.wait(5)
                srv.close()
            rows.append([workers, "wrk -c50" if loaded else "idle", f"{elapsed:.3f}", code])
    return bu.table(
        ["workers", "load", "SIGTERM to exit, s", "exit code"], rows, title="(c) stop latency"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    duration = 3.0 if args.quick else 5.0
    print(bu.header("bench/workers.py", sys.argv))
    table, memory = throughput(rounds, duration)
    print(table)
    print(memory)
    print(stop_latency([1, 2, 4]))


if __name__ == "__main__":
    main()
