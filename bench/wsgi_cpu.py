"""CPU per keep-alive request of graceserve's WSGI path, no load generator; optionally two trees.

Run from the repository root (stdlib only; the Flask case runs when Flask is
importable, e.g. with ``bench/.venv-speed/bin/python``):

    python bench/wsgi_cpu.py                        # this tree (~2 min)
    python bench/wsgi_cpu.py --quick                # short run
    python bench/wsgi_cpu.py --baseline /tmp/base   # this tree against another checkout
    python bench/wsgi_cpu.py --modes loop           # the in-process loop only
    python bench/wsgi_cpu.py --profile hello        # cProfile of the serving thread

Why: wrk's req/s swing by +-20 % from run to run on a shared 2-core machine,
which hides a 5 % difference.  Two figures, each what a request costs the
thread that serves it:

- socket: one keep-alive TCP connection on 127.0.0.1 (TCP_NODELAY both
  ends), a client thread sending wrk's exact request (``GET / HTTP/1.1`` +
  ``Host``) and waiting for each response (ping-pong, so the server blocks in
  its read between requests as under wrk), the server side run by
  ``GracefulWSGIServer.finish_request`` with ``threads=None`` (a thread per
  connection: ``WSGIConnection.run``, the pool out of the picture) in a
  thread whose CPU time (``time.thread_time()``, user + system; and user
  alone, ``RUSAGE_THREAD``) is divided by the number of requests.  It
  includes the syscalls, and on a loaded machine it swings by 2x from one
  run to the next (the kernel's split between user and system time is an
  estimate, too): compare medians of many rounds, paired.
- loop: the same ``WSGIConnection.run`` over an in-memory client (one request
  per read, a Python ``readinto`` as ``socket.SocketIO``'s) and a sink for
  the responses: graceserve's Python alone, no syscalls, the best of five
  runs.  Stable within a few per cent under load: the figure to optimise.

Each measurement runs in a fresh child process that imports graceserve from
the tree it is given (this checkout, or ``--baseline DIR``: e.g. an export of
main, ``git archive main | tar -x -C /tmp/base``), so two versions of the
code are compared in one session; rounds interleave the trees and cases
(order rotated) and medians are reported.  Cases: ``hello`` (the app of
``bench/speed_hello.py``) and, when Flask imports, ``flask``
(``bench/speed_flask.py``).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pingpong import drive

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
CASES = {"hello": "speed_hello", "flask": "speed_flask"}


def request_bytes(port: int) -> bytes:
    """wrk's request, byte for byte."""
    return b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (HOST.encode(), port)


def serve_one_connection(app: Any, requests: int, profile: bool = False) -> tuple[float, float]:
    """Serving-thread CPU microseconds per request for ``requests`` keep-alive requests:
    user + system (``thread_time``), and user alone (``RUSAGE_THREAD``).

    Imports graceserve from whatever ``sys.path`` says (the child set it).
    """
    from graceserve import GracefulWSGIServer
    from graceserve.wsgi.options import WSGIOptions

    server = GracefulWSGIServer((HOST, 0), app, options=WSGIOptions(threads=None))
    port = server.server_address[1]
    client = socket.create_connection((HOST, port), timeout=10)
    conn, address = server.socket.accept()
    for sock in (client, conn):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.registry.add(conn, server.make_connection(conn, address))
    cpu: list[float] = []
    profiler: Any = None

    def serve() -> None:
        nonlocal profiler
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.thread_time()
        u0 = resource.getrusage(resource.RUSAGE_THREAD).ru_utime
        server.finish_request(conn, address)
        cpu.append(time.thread_time() - t0)
        cpu.append(resource.getrusage(resource.RUSAGE_THREAD).ru_utime - u0)
        if profiler is not None:
            profiler.disable()

    try:
        drive(serve, client, request_bytes(port), requests)
    finally:
        conn.close()
        server.registry.discard(conn)
        server.server_close()
    if profiler is not None:
        import pstats

        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
    return cpu[0] / requests * 1e6, cpu[1] / requests * 1e6


class _Sink:
    """The socket of the in-process loop: what is sent is counted, not sent."""

    def __init__(self) -> None:
        self.sent = 0

    def sendall(self, data: bytes) -> None:
        self.sent += len(data)

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the loop passes its own rfile")


class _Requests(io.RawIOBase):
    """The client of the in-process loop: one request per read, as ``recv`` gives them
    under ping-pong (a Python ``readinto``, as ``socket.SocketIO``'s)."""

    def __init__(self, request: bytes, count: int) -> None:
        super().__init__()
        self.request = request
        self.left = count

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        self.left -= 1
        size = len(self.request)
        buffer[:size] = self.request
        return size


def loop_cost(app: Any, requests: int, repeats: int = 5) -> float:
    """Python microseconds per request with no socket: ``requests`` requests read from
    memory (one per read) by ``WSGIConnection.run``, responses into a sink; the best of
    ``repeats`` runs (timeit's rule: noise only ever adds)."""
    from graceserve import GracefulWSGIServer
    from graceserve.wsgi.handler import WSGIConnection
    from graceserve.wsgi.options import WSGIOptions

    server = GracefulWSGIServer((HOST, 0), app, options=WSGIOptions(threads=None))
    request = request_bytes(server.server_address[1])
    best = float("inf")
    try:
        for _ in range(repeats):
            sink = _Sink()
            address = (HOST, 40000)
            server.registry.add(sink, server.make_connection(sink, address))  # type: ignore[arg-type]
            rfile = io.BufferedReader(_Requests(request, requests), 16384)
            connection = WSGIConnection(server, sink, address, rfile)  # type: ignore[arg-type]
            t0 = time.thread_time()
            connection.run()
            best = min(best, time.thread_time() - t0)
            server.registry.discard(sink)  # type: ignore[arg-type]
            assert sink.sent > requests * 20, "every request answered"
    finally:
        server.server_close()
    return best / requests * 1e6


def child(tree: str, case: str, requests: int, profile: bool, mode: str = "socket") -> None:
    """One measurement with graceserve from ``tree``: prints us/request."""
    sys.path[:0] = [tree, str(BENCH)]
    module = __import__(CASES[case])
    serve_one_connection(module.app, 300)  # warm-up: imports, caches
    if mode == "loop":
        print(f"{loop_cost(module.app, requests):.3f}", flush=True)
        return
    total, user = serve_one_connection(module.app, requests, profile)
    print(f"{total:.3f} {user:.3f}", flush=True)


def measure(tree: str, case: str, mode: str, requests: int) -> list[float]:
    """One child's figures: us/request user + system and user (socket), or the loop's."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH="")
    cmd = [sys.executable, __file__, "--child", tree, case, mode, str(requests)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({' '.join(cmd)}):\n{done.stderr}")
    return [float(x) for x in done.stdout.split()]


def flask_available() -> bool:
    try:
        import flask  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--rounds", type=int, help="rounds (default 11, --quick 3)")
    parser.add_argument("--requests", type=int, help="requests per measurement (default 3000)")
    parser.add_argument("--baseline", metavar="DIR", help="another checkout to compare against")
    parser.add_argument("--cases", default=None, help="comma-separated: hello,flask")
    parser.add_argument("--profile", metavar="CASE", help="cProfile one run of CASE, this tree")
    parser.add_argument(
        "--modes", default="socket,loop", help="socket (ping-pong over TCP), loop (no socket)"
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("TREE", "CASE", "MODE", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        tree, case, mode, n = args.child
        child(tree, case, int(n), profile=False, mode=mode)
        return
    if args.profile:
        child(str(ROOT), args.profile, args.requests or 3000, profile=True)
        return
    import benchutil as bu

    rounds = args.rounds or (3 if args.quick else 11)
    requests = args.requests or (1000 if args.quick else 3000)
    cases = args.cases.split(",") if args.cases else ["hello"]
    if not args.cases and flask_available():
        cases.append("flask")
    modes = args.modes.split(",")
    trees = {"this tree": str(ROOT)}
    if args.baseline:
        trees["baseline"] = str(Path(args.baseline).resolve())
    print(bu.header("bench/wsgi_cpu.py: serving-thread CPU per keep-alive WSGI request", sys.argv))
    for name, path in trees.items():
        print(f"{name}: {path}")
    print()
    runs = [(t, c, m) for m in modes for c in cases for t in trees]
    metrics = {"socket": ("socket user+sys", "socket user"), "loop": ("loop (no socket)",)}
    res: dict[tuple[str, str, str], list[float]] = {}
    for r in range(rounds):
        shift = r % len(runs)
        for t, c, m in runs[shift:] + runs[:shift]:
            n = requests * 5 if m == "loop" else requests
            for metric, value in zip(metrics[m], measure(trees[t], c, m, n), strict=True):
                res.setdefault((t, c, metric), []).append(value)
        bu.say(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{'/'.join(k)} {v[-1]:.1f}" for k, v in res.items())
        )
    rows = [
        [f"{c}, {metric}, {t}", bu.median(v), min(v), max(v)] for (t, c, metric), v in res.items()
    ]
    print(
        bu.table(
            ["case, figure, tree", "us/req med", "min", "max"],
            rows,
            title=f"{rounds} rounds x {requests} requests on one connection (order rotated); "
            f"the loop: {requests * 5} requests, best of 5 per round",
        )
    )
    if args.baseline:
        print()
        for (t, c, metric), new in res.items():
            if t != "this tree":
                continue
            old = res["baseline", c, metric]
            paired = [a / b for a, b in zip(new, old, strict=True)]
            print(
                f"{c}, {metric}: this tree - baseline = "
                f"{bu.median(new) - bu.median(old):+.1f} us/req; this tree / baseline = "
                f"{bu.median(paired):.3f} (median of per-round ratios)"
            )


if __name__ == "__main__":
    main()
