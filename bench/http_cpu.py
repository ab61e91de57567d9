"""CPU per keep-alive request of graceserve's HTTP handler path vs the stdlib's, no load generator.

Run from the repository root (stdlib only, nothing to install):

    python bench/http_cpu.py            # full run (~1 min)
    python bench/http_cpu.py --quick    # short run (~10 s)

Why: on a shared 2-core machine wrk's req/s swing by +-20 % from one run to
the next, which hides a 5 % difference.  This measures what a request costs
the thread that serves it, which noisy neighbours barely change: one
keep-alive TCP connection on 127.0.0.1 (TCP_NODELAY both ends), a client
thread sending wrk's exact request (``GET / HTTP/1.1`` + ``Host``) and
waiting for each response (ping-pong, so the handler blocks in ``recv``
between requests exactly as under wrk), and the server side run by the
server's own ``finish_request`` in a thread whose CPU time
(``time.thread_time()``, user + system) is divided by the number of requests.

Compared, rounds interleaved (order rotated), medians reported:

- stdlib ``ThreadingHTTPServer`` with ``peers.HelloHandler``
- ``GracefulHTTPServer`` with the same ``peers.HelloHandler``
  (drain-aware subclass slotted in, connection registered as in
  ``process_request``)
- both again with graceserve's demo handler (``graceserve.demo.DemoHandler``)
- ``GracefulHTTPServer`` + ``HelloHandler`` with the hooks a worker installs
  under ``--metrics-bind`` (each request recorded into a ``RequestMeter``)

The difference between the two servers with the same handler is graceserve's
per-request price or saving: the connection's state changes (one registry
lock round-trip, two clock reads), the Connection-header hook, and the strict
head reader (``graceserve.http.parse``) in place of the stdlib's
``email.parser``, which is where graceserve comes out cheaper.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import sys
import time
from pathlib import Path

import benchutil as bu
import peers
from pingpong import drive

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graceserve import GracefulHTTPServer  # noqa: E402
from graceserve.core.metering import RequestMeter  # noqa: E402
from graceserve.core.serverhooks import ServerHooks  # noqa: E402
from graceserve.demo import DemoHandler  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"

CASES = {
    "stdlib + HelloHandler": (http.server.ThreadingHTTPServer, peers.HelloHandler),
    "graceserve + HelloHandler": (GracefulHTTPServer, peers.HelloHandler),
    "stdlib + DemoHandler": (http.server.ThreadingHTTPServer, DemoHandler),
    "graceserve + DemoHandler": (GracefulHTTPServer, DemoHandler),
    "graceserve + HelloHandler, metered": (GracefulHTTPServer, peers.HelloHandler),
}


class MeteredHooks(ServerHooks):
    """What a worker under ``--metrics-bind`` installs: each request into a RequestMeter."""

    def __init__(self) -> None:
        self.meter = RequestMeter()
        self.record = self.meter.record

    def request_done(self, status: int = 0, seconds: float = 0.0) -> None:
        self.record(status, seconds)


def serve_one_connection(case: str, requests: int) -> float:
    """Handler-thread CPU microseconds per request for ``requests`` keep-alive requests."""
    server_class, handler = CASES[case]
    server = server_class((bu.HOST, 0), handler)
    hooks = MeteredHooks() if case.endswith("metered") else None
    if hooks is not None and isinstance(server, GracefulHTTPServer):
        server.install_hooks(hooks)
    client = socket.create_connection((bu.HOST, server.server_address[1]), timeout=10)
    conn, address = server.socket.accept()
    for sock in (client, conn):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if isinstance(server, GracefulHTTPServer):
        server.registry.add(conn, server.make_connection(conn, address))
    cpu: list[float] = []

    def serve() -> None:
        t0 = time.thread_time()
        server.finish_request(conn, address)
        cpu.append(time.thread_time() - t0)

    try:
        drive(serve, client, REQUEST, requests)
    finally:
        conn.close()
        if isinstance(server, GracefulHTTPServer):
            server.registry.discard(conn)
        server.server_close()
    if hooks is not None:
        assert hooks.meter.snapshot().count == requests, "every request metered"
    return cpu[0] / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    args = parser.parse_args()
    rounds, requests = (3, 1000) if args.quick else (15, 3000)
    print(bu.header("bench/http_cpu.py: handler-thread CPU per keep-alive request", sys.argv))
    print()
    names = list(CASES)
    res: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        serve_one_connection(n, 200)  # warm-up
    for r in range(rounds):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            res[n].append(serve_one_connection(n, requests))
        bu.say(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {res[n][-1]:.1f}" for n in names))
    rows = [[n, bu.median(v), min(v), max(v)] for n, v in res.items()]
    print(
        bu.table(
            ["server + handler", "us/req med", "min", "max"],
            rows,
            title=f"{rounds} rounds x {requests} requests on one connection (order rotated)",
        )
    )
    print()
    for handler in ("HelloHandler", "DemoHandler"):
        g, s = res[f"graceserve + {handler}"], res[f"stdlib + {handler}"]
        paired = [a / b for a, b in zip(g, s, strict=True)]
        print(
            f"{handler}: graceserve - stdlib = {bu.median(g) - bu.median(s):+.1f} us/req; "
            f"graceserve / stdlib = {bu.median(paired):.3f} (median of per-round ratios)"
        )
    g, m = res["graceserve + HelloHandler"], res["graceserve + HelloHandler, metered"]
    paired = [a / b for a, b in zip(m, g, strict=True)]
    print(
        f"--metrics-bind's meter: {bu.median(m) - bu.median(g):+.1f} us/req; "
        f"metered / unmetered = {bu.median(paired):.3f} (median of per-round ratios)"
    )


if __name__ == "__main__":
    main()
