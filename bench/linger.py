"""Periodic keep-alive clients through SIGTERM: how many connections break, per client library.

Run from the repository root (needs the ``test`` extra: requests, urllib3, httpx):

    python bench/linger.py                 # 5 rounds per client, 40 connections each
    python bench/linger.py --rounds 2 --clients http.client,httpx

Why: a close of an idle keep-alive connection always races a client that is
about to send; the server's only lever is *when* it closes.  Clients whose
think time sits near a fixed linger lose that race.  Each round starts
``python -m graceserve`` (the demo app), opens ``--connections`` keep-alive
connections with one client library, each sending ``GET /`` every
``--period`` seconds (uniformly drawn from the range, every time), lets
every connection send a few requests, sends SIGTERM, and waits for every
connection to end.

A connection ends cleanly when a response says ``Connection: close`` (the
client then stops: its reconnect would be refused); it is *broken* when a
request it sent fails (``RemoteDisconnected``, a reset, a refused reconnect
after a FIN the client had not seen).  ``http.client`` never checks for a FIN
before reusing a connection; ``requests``/``urllib3`` check and reconnect
(refused: broken too); ``httpx`` likewise.  No retries anywhere.

Reported per client: broken connections per round, their total, the exit
codes, and for each broken one the error and when it happened relative to
SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY = re.compile(r"listening on http://([^\s:]+):(\d+)")
CLIENTS = ("http.client", "requests", "urllib3", "httpx")
WARM_REQUESTS = 3  # every connection sends this many before the signal
ROUND_DEADLINE = 30.0  # seconds, for one whole round


@dataclass
class Outcome:
    """What one connection saw."""

    ok: int = 0
    closed_cleanly: bool = False
    error: str = ""
    error_at: float = 0.0  # time.monotonic() of the failure


@dataclass
class Round:
    """One round with one client library."""

    client: str
    outcomes: list[Outcome] = field(default_factory=list)
    exit_code: int | None = None
    sigterm_at: float = 0.0
    server_output: str = ""

    @property
    def broken(self) -> list[Outcome]:
        """The connections on which a request failed."""
        return [o for o in self.outcomes if o.error]


# A requester sends one GET / and returns (status, body, says_close); None closes it.
Requester = Callable[[], tuple[int, bytes, bool]]


def make_requester(client: str, port: int) -> tuple[Requester, Callable[[], None]]:
    """One keep-alive connection of ``client``: (send one request, close)."""
    url = f"http://{HOST}:{port}/"
    if client == "http.client":
        import http.client

        conn = http.client.HTTPConnection(HOST, port, timeout=10)

        def hc() -> tuple[int, bytes, bool]:
            conn.request("GET", "/")
            with conn.getresponse() as response:
                return response.status, response.read(), bool(response.will_close)

        return hc, conn.close
    if client == "requests":
        import requests

        session = requests.Session()

        def rq() -> tuple[int, bytes, bool]:
            response = session.get(url, timeout=10)
            return response.status_code, response.content, _says_close(response.headers)

        return rq, session.close
    if client == "urllib3":
        import urllib3

        pool = urllib3.HTTPConnectionPool(HOST, port, maxsize=1, retries=False, timeout=10)

        def u3() -> tuple[int, bytes, bool]:
            response = pool.request("GET", "/")
            return response.status, response.data, _says_close(response.headers)

        return u3, pool.close
    if client == "httpx":
        import httpx

        session_x = httpx.Client(timeout=10)

        def hx() -> tuple[int, bytes, bool]:
            response = session_x.get(url)
            return response.status_code, response.content, _says_close(response.headers)

        return hx, session_x.close
    raise ValueError(f"unknown client {client!r}")


def _says_close(headers: Mapping[str, str]) -> bool:
    value = headers.get("Connection") or ""
    return "close" in str(value).lower()


def run_connection(
    client: str,
    port: int,
    period: tuple[float, float],
    outcome: Outcome,
    warm: threading.Semaphore,
    deadline: float,
    seed: int,
) -> None:
    """Requests every ``period`` seconds on one connection until told to close, or an error."""
    rng = random.Random(seed)
    send, close = make_requester(client, port)
    try:
        while time.monotonic() < deadline:
            try:
                status, body, says_close = send()
            except Exception as exc:  # every library's own error types: all count
                outcome.error = f"{type(exc).__name__}: {exc}"[:160]
                outcome.error_at = time.monotonic()
                return
            if status != 200 or body != b"hello from graceserve\n":
                outcome.error = f"{status} {body[:40]!r}"
                outcome.error_at = time.monotonic()
                return
            outcome.ok += 1
            if says_close:
                outcome.closed_cleanly = True
                return
            if outcome.ok == WARM_REQUESTS:
                warm.release()  # and carry on, in this connection's own phase
            time.sleep(rng.uniform(*period))
    finally:
        close()


def start_server(
    extra: list[str],
) -> tuple[subprocess.Popen[str], int, list[str], threading.Thread]:
    """``python -m graceserve`` on a free port: the process, its port, its stderr lines
    (read on by the returned thread until EOF)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(
        [sys.executable, "-m", "graceserve", "--bind", f"{HOST}:0", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        match = READY.search(line)
        if match:
            break
    else:
        proc.wait(10)
        raise RuntimeError("server did not start:\n" + "\n".join(lines))

    def read_rest() -> None:
        assert proc.stderr is not None
        for rest in proc.stderr:
            lines.append(rest.rstrip("\n"))

    reader = threading.Thread(target=read_rest, name="linger-stderr", daemon=True)
    reader.start()
    return proc, int(match.group(2)), lines, reader


def one_round(
    client: str,
    connections: int = 40,
    period: tuple[float, float] = (0.19, 0.23),
    server_args: list[str] | None = None,
    seed: int = 0,
) -> Round:
    """One round: ``connections`` periodic keep-alive clients, SIGTERM once all are warm."""
    proc, port, lines, reader = start_server(server_args or [])
    result = Round(client)
    deadline = time.monotonic() + ROUND_DEADLINE
    warm = threading.Semaphore(0)
    result.outcomes = [Outcome() for _ in range(connections)]
    threads = [
        threading.Thread(
            target=run_connection,
            args=(client, port, period, outcome, warm, deadline, seed * 1000 + n),
            name=f"linger-{client}-{n}",
            daemon=True,
        )
        for n, outcome in enumerate(result.outcomes)
    ]
    try:
        for thread in threads:
            thread.start()
        for _ in threads:  # every connection warm (or the round's deadline)
            warm.acquire(timeout=max(deadline - time.monotonic(), 0.1))
        time.sleep(random.Random(seed).uniform(0.0, 0.25))  # a random phase for the signal
        result.sigterm_at = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        result.exit_code = proc.wait(max(deadline - time.monotonic(), 1.0))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(10)
        if proc.stderr is not None and not reader.is_alive():
            proc.stderr.close()
        result.server_output = "\n".join(lines)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--period", default="0.19,0.23", help="think time range, seconds")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("server_args", nargs="*", help="extra graceserve flags (after --)")
    args = parser.parse_args()
    low, high = (float(x) for x in args.period.split(","))
    clients = args.clients.split(",")
    print(f"bench/linger.py: {args.connections} keep-alive connections per round, think time")
    print(f"{low:g}-{high:g} s, SIGTERM once every connection sent {WARM_REQUESTS} requests;")
    print(f"{args.rounds} rounds per client, clients interleaved; python {sys.version.split()[0]}")
    results: dict[str, list[Round]] = {c: [] for c in clients}
    for number in range(args.rounds):
        for client in clients[number % len(clients) :] + clients[: number % len(clients)]:
            res = one_round(client, args.connections, (low, high), args.server_args, number)
            results[client].append(res)
            print(
                f"  round {number + 1} {client}: broken {len(res.broken)}/{len(res.outcomes)},"
                f" exit {res.exit_code}",
                flush=True,
            )
    print()
    print(f"{'client':<12} {'broken per round':<24} {'total':>7} {'exit codes'}")
    for client, rounds in results.items():
        per = [len(r.broken) for r in rounds]
        total = sum(per)
        conns = sum(len(r.outcomes) for r in rounds)
        codes = sorted({r.exit_code for r in rounds}, key=str)
        print(f"{client:<12} {per!s:<24} {total:>3}/{conns:<4} {codes}")
    for client, rounds in results.items():
        for number, res in enumerate(rounds, 1):
            for outcome in res.broken:
                after = (outcome.error_at - res.sigterm_at) * 1e3
                print(f"  {client} round {number}: {after:+.0f} ms after SIGTERM: {outcome.error}")


if __name__ == "__main__":
    main()
