"""--max-requests under wrk: how far past its limit a worker goes before it stops accepting.

Run from the repository root (wrk installed: ``bash bench/setup``):

    python bench/max_requests.py                       # --workers 2, N=100 and 1000, 10 s each
    python bench/max_requests.py --limit 100 --seconds 5

(Copied into another checkout and run from there, it measures that checkout.)

``wrk -t2 -c50`` keep-alive on the WSGI hello app (``bench/peers.py``) while
``graceserve --workers 2 --max-requests N`` recycles its workers.  From the
supervisor's log: the count at which each recycling was decided ("served X
requests: recycling it"; a per-request decision says exactly N) and, for each
recycled worker, the requests it served in all ("stopped ... after Y requests",
when the version logs it): Y - N is the overshoot, the requests served between
the limit and the moment its replacement was ready and it stopped accepting
(plus what its keep-alive clients sent until they read ``Connection: close``).
wrk's errors are printed too: a recycling must break nothing.
"""

from __future__ import annotations

import argparse
import re
import sys

import benchutil as bu
import http_load

DECIDED = re.compile(r"served (\d+) requests: recycling it")
STOPPED = re.compile(
    r"worker (\d+) \(generation \d+\) stopped \(exit code \d+\) after (\d+) requests"
)


def run(limit: int, seconds: float) -> list[object]:
    """One server, one wrk run: the table's row."""
    port = bu.free_port()
    cmd = [
        sys.executable, "-m", "graceserve", "peers:wsgi_app", "--bind", f"{bu.HOST}:{port}",
        "--workers", "2", "--max-requests", str(limit), "--log-level", "info",
    ]  # fmt: skip
    server = bu.Server(f"--max-requests {limit}", cmd)
    try:
        server.start(port=port, timeout=30)
        wrk = http_load.run_wrk(port, seconds)
        server.signal(15)
        server.wait(30)
        lines = server.lines
    finally:
        server.close()
    decided = [int(m[1]) for line in lines if (m := DECIDED.search(line))]
    recycled = {int(m[1]): int(m[2]) for line in lines if (m := STOPPED.search(line))}
    over = [total - limit for total in recycled.values()]  # only recycled workers say it
    errors = (
        f"c{wrk.connect} r{wrk.read} w{wrk.write} t{wrk.timeout} n{wrk.non2xx}"
        if wrk.connect + wrk.read + wrk.write + wrk.timeout + wrk.non2xx
        else 0
    )
    return [
        limit, f"{wrk.rps:,.0f}", len(decided),
        f"{min(decided)}-{max(decided)}" if decided else "-",
        f"{bu.median(over):.0f}" if over else "-", f"{max(over)}" if over else "-",
        f"{bu.median(over) / limit:.2f}" if over else "-", errors,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, action="append")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(bu.header("bench/max_requests.py", sys.argv))
    rows = [run(limit, args.seconds) for limit in args.limit or [100, 1000]]
    print(
        bu.table(
            [
                "N",
                "req/s",
                "recyclings",
                "decided at",
                "overshoot med",
                "max",
                "med / N",
                "wrk errors",
            ],
            rows,
            title=f"graceserve --workers 2 --max-requests N, wrk -t2 -c50 -d{args.seconds:g}s",
        )
    )


if __name__ == "__main__":
    main()
