"""Accounting overhead and drain latency of GracefulTCPServer, next to the stdlib.

Run from the repository root (stdlib only, nothing to install):

    python bench/accounting.py            # full run (~2 min)
    python bench/accounting.py --quick    # short run (~15 s)
    python bench/accounting.py --only conns|idle|last [--rounds N]

What it measures, each side by side with ``socketserver.ThreadingTCPServer``:

1. Connections per second.  Both servers run the same echo
   ``StreamRequestHandler`` (one short line, then the handler returns), each
   in its own process, both started up front, each with its class defaults.
   The client is the same for both: 4 threads in this process, each doing
   connect, send one line, read until EOF, close, as fast as it can (the
   server closes first, so TIME_WAIT stays on the server side and client
   ports never run out).  10 rounds of 3 s, ABBA order; reported: conns/s and
   the server process's CPU microseconds per connection (/proc), medians over
   the rounds, and graceful/stdlib ratios (ratio of medians, and the median
   of per-round paired ratios).  Target: graceful costs < 5 %.  On a shared
   2-core machine one round swings +-20 %: trust the paired ratio and the CPU
   per connection, and use --rounds 16 or more to settle a few per cent.
2. Idle stop latency: on an idle server with ``serve_forever`` running in a
   thread, at a random phase (0-0.5 s after start), the time for
   ``GracefulTCPServer.drain()`` (and ``shutdown()``) to return, against the
   stdlib's ``shutdown()`` (0.5 s poll) and ``shutdown()`` + ``server_close()``.
   Target for drain(): < 5 ms.
3. Last-connection-to-return latency: one handler is blocked on a gate Event
   while a stop waits for it (``drain()`` for graceserve, ``shutdown()`` then
   ``server_close()`` joining the handler thread for the stdlib).  We open
   the gate and measure (a) from the moment the handler's ``handle()``
   returns (``time.perf_counter()`` in its ``finally``) and (b) from the
   ``gate.set()`` call, to the moment the stop call returns.  Target < 5 ms.
"""

from __future__ import annotations

import argparse
import random
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path

import benchutil as bu

from graceserve import GracefulTCPServer  # benchutil put this checkout on sys.path

SELF = str(Path(__file__).resolve())
CLIENT_THREADS = 4
LINE = b"ping 0123456789\n"
SERVERS = {"graceful": GracefulTCPServer, "stdlib": socketserver.ThreadingTCPServer}


class EchoHandler(socketserver.StreamRequestHandler):
    """Echo one line, then return (the server closes the connection)."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline(1024))


# -- 1. connections per second ---------------------------------------------


def serve_main(kind: str) -> None:
    """Server process: serve the echo handler until killed."""
    server = SERVERS[kind]((bu.HOST, 0), EchoHandler)
    port = server.server_address[1]
    print(f"listening on tcp://{bu.HOST}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


def one_connection(port: int) -> bool:
    """Connect, send one line, read to EOF, close; True if the echo came back whole."""
    with socket.create_connection((bu.HOST, port), timeout=5) as sock:
        sock.sendall(LINE)
        got = b""
        while chunk := sock.recv(256):
            got += chunk
    return got == LINE


def client_round(port: int, seconds: float) -> tuple[int, int]:
    """CLIENT_THREADS threads hammer ``port`` for ``seconds``; (ok, errors)."""
    counts = [[0, 0] for _ in range(CLIENT_THREADS)]
    stop_at = time.perf_counter() + seconds
    start = threading.Barrier(CLIENT_THREADS)

    def worker(slot: list[int]) -> None:
        start.wait()
        while time.perf_counter() < stop_at:
            try:
                ok = one_connection(port)
            except OSError:
                ok = False
            slot[0 if ok else 1] += 1

    threads = [threading.Thread(target=worker, args=(c,)) for c in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def bench_throughput(rounds: int, seconds: float) -> str:
    servers = {kind: bu.Server(kind, [sys.executable, SELF, "--serve", kind]) for kind in SERVERS}
    try:
        for srv in servers.values():
            srv.start(ready_line=True)
        for srv in servers.values():  # warm-up, not counted
            client_round(srv.port, min(seconds, 0.5))
        results: dict[str, list[tuple[float, float, int]]] = {kind: [] for kind in SERVERS}
        for r in range(rounds):
            order = list(SERVERS) if r % 2 == 0 else list(reversed(SERVERS))
            for kind in order:
                srv = servers[kind]
                cpu0, t0 = srv.cpu_seconds(), time.perf_counter()
                ok, errors = client_round(srv.port, seconds)
                elapsed, cpu = time.perf_counter() - t0, srv.cpu_seconds() - cpu0
                results[kind].append((ok / elapsed, cpu / max(ok, 1) * 1e6, errors))
                bu.say(f"  round {r + 1}/{rounds} {kind}: {ok / elapsed:,.0f} conns/s")
                time.sleep(0.2)
    finally:
        for srv in servers.values():
            srv.kill()
    rows = []
    for kind in SERVERS:
        rate = [x[0] for x in results[kind]]
        cpus = [x[1] for x in results[kind]]
        rows.append(
            [
                kind,
                bu.median(rate),
                min(rate),
                max(rate),
                bu.median(cpus),
                sum(x[2] for x in results[kind]),
            ]
        )
    g, s = results["graceful"], results["stdlib"]
    medians = {kind: bu.median([x[0] for x in results[kind]]) for kind in SERVERS}
    ratio_of_medians = medians["graceful"] / medians["stdlib"]
    pair_rate = [a[0] / b[0] for a, b in zip(g, s, strict=True)]
    pair_cpu = [a[1] / b[1] for a, b in zip(g, s, strict=True)]
    out = [
        bu.table(
            ["server", "conns/s med", "min", "max", "cpu us/conn med", "errors"],
            rows,
            title=f"1. new connection per request, echo one line "
            f"({CLIENT_THREADS} client threads, {rounds} rounds x {seconds:g} s, ABBA)",
        ),
        "",
        f"graceful/stdlib conns/s: ratio of medians {ratio_of_medians:.3f}, "
        f"median of per-round ratios {bu.median(pair_rate):.3f} "
        f"-> graceful overhead {100 * (1 - bu.median(pair_rate)):+.1f} % (target < 5 %)",
        f"graceful/stdlib server CPU per connection: median of per-round ratios "
        f"{bu.median(pair_cpu):.3f} ({100 * (bu.median(pair_cpu) - 1):+.1f} %)",
    ]
    return "\n".join(out)


# -- 2. idle stop latency ----------------------------------------------------


def idle_stop(kind: str, how: str, phase: float) -> float:
    """Seconds for ``how`` to return on an idle server, ``phase`` s after serve_forever."""
    server = SERVERS[kind]((bu.HOST, 0), EchoHandler)
    graceful = server if isinstance(server, GracefulTCPServer) else None
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    time.sleep(phase)
    t0 = time.perf_counter()
    if how == "drain()":
        assert graceful is not None
        graceful.drain(timeout=5)
    elif how == "shutdown()":
        server.shutdown()
    else:
        server.shutdown()
        server.server_close()
    elapsed = time.perf_counter() - t0
    server.shutdown()
    loop.join(5)
    server.server_close()
    return elapsed


def bench_idle(runs: int) -> str:
    cases = [
        ("graceful", "drain()"),
        ("graceful", "shutdown()"),
        ("stdlib", "shutdown()"),
        ("stdlib", "shutdown()+server_close()"),
    ]
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    rng = random.Random(1)
    for r in range(runs):
        order = cases if r % 2 == 0 else cases[::-1]
        for case in order:
            times[case].append(idle_stop(*case, phase=rng.uniform(0, 0.5)))
    rows = [
        [f"{k} {h}", bu.median(v) * 1e3, bu.mean(v) * 1e3, bu.pct(v, 90) * 1e3, max(v) * 1e3]
        for (k, h), v in times.items()
    ]
    base = bu.median(times[("stdlib", "shutdown()+server_close()")])
    drain = bu.median(times[("graceful", "drain()")])
    return "\n".join(
        [
            bu.table(
                ["idle server, stop call", "median ms", "mean ms", "p90 ms", "max ms"],
                rows,
                title=f"2. idle stop latency, random phase 0-0.5 s ({runs} runs each, interleaved)",
            ),
            "",
            f"graceful drain() median {drain * 1e3:.3f} ms (target < 5 ms); "
            f"stdlib shutdown()+server_close() / graceful drain() = {base / drain:,.0f}x",
        ]
    )


# -- 3. last connection to return -------------------------------------------


def last_connection(kind: str) -> tuple[float, float]:
    """(handle() end -> stop returns, gate.set() -> stop returns), in seconds."""
    entered, gate = threading.Event(), threading.Event()
    marks: dict[str, float] = {}

    class GatedHandler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                line = self.rfile.readline(1024)
                entered.set()
                gate.wait(10)
                self.wfile.write(line)
            finally:
                marks["handled"] = time.perf_counter()

    server = SERVERS[kind]((bu.HOST, 0), GatedHandler)
    graceful = server if isinstance(server, GracefulTCPServer) else None
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    port = server.server_address[1]
    reply: list[bytes] = []

    def client() -> None:
        with socket.create_connection((bu.HOST, port), timeout=10) as sock:
            sock.sendall(LINE)
            reply.append(sock.recv(256))

    def stop() -> None:
        if graceful is not None:
            report = graceful.drain(timeout=10)
            assert report.clean, report
        else:
            server.shutdown()
            marks["stopped_accepting"] = time.perf_counter()
            server.server_close()  # joins the handler thread (block_on_close)
        marks["returned"] = time.perf_counter()

    cli = threading.Thread(target=client)
    cli.start()
    entered.wait(10)
    stopper = threading.Thread(target=stop)
    stopper.start()
    # Let the stop reach its wait: graceserve's drain needs a few ms, the stdlib
    # shutdown() up to its 0.5 s poll.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if graceful is not None and graceful.draining:
            time.sleep(0.02)
            break
        if kind == "stdlib" and "stopped_accepting" in marks:
            time.sleep(0.02)
            break
        time.sleep(0.005)
    marks["gate"] = time.perf_counter()
    gate.set()
    stopper.join(10)
    cli.join(10)
    loop.join(10)
    assert reply == [LINE], reply
    return marks["returned"] - marks["handled"], marks["returned"] - marks["gate"]


def bench_last(runs: int) -> str:
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in SERVERS}
    for r in range(runs):
        for kind in list(SERVERS) if r % 2 == 0 else list(reversed(SERVERS)):
            res[kind].append(last_connection(kind))
    rows = []
    for kind, label in (("graceful", "drain()"), ("stdlib", "shutdown()+server_close()")):
        a = [x[0] * 1e3 for x in res[kind]]
        b = [x[1] * 1e3 for x in res[kind]]
        rows.append(
            [f"{kind} {label}", bu.median(a), bu.pct(a, 90), max(a), bu.median(b), bu.pct(b, 90)]
        )
    return bu.table(
        [
            "one gated in-flight handler",
            "handle end->ret med ms",
            "p90",
            "max",
            "gate.set->ret med ms",
            "p90",
        ],
        rows,
        title=f"3. last connection to stop returning ({runs} runs each, interleaved; "
        "target < 5 ms)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--only", choices=["conns", "idle", "last"], help="run one part")
    parser.add_argument("--rounds", type=int, help="part 1 rounds (default 10, quick 2)")
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.serve)
        return
    rounds, seconds, runs = (2, 0.5, 6) if args.quick else (10, 3.0, 30)
    print(bu.header("bench/accounting.py: GracefulTCPServer vs ThreadingTCPServer", sys.argv))
    if args.only in (None, "conns"):
        print()
        bu.say("1. connections per second ...")
        print(bench_throughput(args.rounds or rounds, seconds))
    if args.only in (None, "idle"):
        print()
        bu.say("2. idle stop latency ...")
        print(bench_idle(runs))
    if args.only in (None, "last"):
        print()
        bu.say("3. last connection to return ...")
        print(bench_last(runs))


if __name__ == "__main__":
    main()
