"""WSGI under wrk: hello-route throughput against waitress and gunicorn, and zero loss at a stop.

Setup once (root): ``bash bench/setup``.  Run from the repository root:

    python bench/wsgi_load.py                 # full run (~4 min)
    python bench/wsgi_load.py --quick         # short run (~1 min)
    python bench/wsgi_load.py --only throughput|loss [--rounds N] [--signal TERM|HUP]

(a) Throughput.  Every server serves the same WSGI app, ``bench/peers.py``'s
    ``wsgi_app`` (``GET /`` -> ``hello from graceserve\\n`` with a
    Content-Length), in one process: ``python -m graceserve peers:wsgi_app``,
    waitress with 16 threads, gunicorn gthread (1 worker x 16 threads) and
    gunicorn sync (1 worker).  ``wrk -t2 -c50 -d5s --latency`` keep-alive.  All
    servers run for the whole benchmark; each round visits every server, the
    order rotating by one each round; reported: medians over the rounds, and
    graceserve's ratio to each peer (ratio of medians and median of the
    per-round ratios, which pairs runs close in time).  The machine is
    shared: quote the ratios, not the absolute figures.
(b) Zero loss.  ``wrk -t2 -c50 -d6s`` keep-alive against ``python -m graceserve
    peers:wsgi_app``, the stop signal (TERM, or HUP for a graceful restart)
    3 s in.  Counted as in bench/http_load.py (a): read errors, write errors
    that are not refusals, timeouts and non-2xx responses are broken requests.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import benchutil as bu
import http_load

PY = sys.executable
PEERS = str(bu.BENCH / "peers.py")
APP = "peers:wsgi_app"


def graceserve_cmd(port: int, log_level: str = "warning") -> list[str]:
    return [PY, "-m", "graceserve", APP, "--bind", f"{bu.HOST}:{port}", "--log-level", log_level]


def servers(waitress_threads: int, gthread_threads: int) -> list[bu.Server]:
    specs: list[tuple[str, Callable[[int], list[str]]]] = [
        ("graceserve (WSGI)", graceserve_cmd),
        (
            f"waitress threads={waitress_threads}",
            lambda p: [PY, PEERS, "waitress", "--threads", str(waitress_threads), "--port", str(p)],
        ),
        (
            f"gunicorn gthread w=1 threads={gthread_threads}",
            lambda p: http_load.gunicorn_cmd(p, "gthread", gthread_threads),
        ),
        ("gunicorn sync w=1", lambda p: http_load.gunicorn_cmd(p, "sync", 0)),
    ]
    result = []
    for name, make in specs:
        port = bu.free_port()
        server = bu.Server(name, make(port))
        server.port = port
        result.append(server)
    return result


def bench_throughput(rounds: int, duration: float, wt: int, gt: int) -> str:
    started = servers(wt, gt)
    results: dict[str, list[bu.WrkResult]] = {s.name: [] for s in started}
    cpu: dict[str, list[float]] = {s.name: [] for s in started}
    try:
        for srv in started:
            srv.start(port=srv.port)
        for srv in started:
            http_load.run_wrk(srv.port, 1)  # warm-up, not counted
        for r in range(rounds):
            shift = r % len(started)
            for srv in started[shift:] + started[:shift]:
                cpu0 = srv.cpu_seconds()
                res = http_load.run_wrk(srv.port, duration)
                cpu[srv.name].append((srv.cpu_seconds() - cpu0) / max(res.requests, 1) * 1e6)
                results[srv.name].append(res)
                bu.say(f"  round {r + 1}/{rounds} {srv.name}: {res.rps:,.0f} req/s")
    finally:
        for srv in started:
            srv.stop(5)
            srv.close()
    ours = started[0].name
    med = {name: bu.median([x.rps for x in runs]) for name, runs in results.items()}
    rows = []
    for name, runs in results.items():
        rps = [x.rps for x in runs]
        paired = [a.rps / b.rps for a, b in zip(results[ours], runs, strict=True)]
        errors = sum(x.connect + x.read + x.write + x.timeout + x.non2xx for x in runs)
        rows.append(
            [
                name,
                med[name],
                min(rps),
                max(rps),
                bu.median([x.latency.get("50%", float("nan")) for x in runs]),
                bu.median([x.latency.get("99%", float("nan")) for x in runs]),
                bu.median(cpu[name]),
                errors,
                f"{med[ours] / med[name]:.2f}",
                f"{bu.median(paired):.2f}",
            ]
        )
    table = bu.table(
        ["server (WSGI hello, 1 process)", "req/s med", "min", "max", "p50 ms", "p99 ms",
         "cpu us/req", "errors", "graceserve / it", "per-round"],
        rows,
        title=f"(a) wrk -t2 -c50 -d{round(duration)}s --latency, {rounds} rounds, "
        "order rotated each round",
    )  # fmt: skip
    worst = min((med[ours] / med[name], name) for name in med if name != ours)  # the closest peer
    return (
        f"{table}\n'graceserve / it': ratio of medians; 'per-round': median of per-round ratios\n"
        f"closest peer: {worst[1]}, graceserve is {worst[0]:.2f}x its throughput\n"
    )


def loss_run(signum: int, duration: float, sigterm_at: float, use_perf: bool) -> dict[str, object]:
    """One wrk run against graceserve serving the WSGI app, ``signum`` sent mid-run."""
    port = bu.free_port()
    srv = bu.Server("graceserve (WSGI)", graceserve_cmd(port, "info")).start(port=port)
    with bu.tempfile_dir() as tmp:
        data = os.path.join(tmp, "wrk.perf")
        prefix = bu.perf_prefix(data) if use_perf else []
        try:
            wrk = subprocess.Popen(
                [*prefix, *bu.wrk_command(port, duration)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            time.sleep(sigterm_at)
            t_sig = time.monotonic()
            srv.signal(signum)
            code = srv.wait(15)
            exit_s = time.monotonic() - t_sig if code is not None else float("nan")
            try:
                out, _ = wrk.communicate(timeout=duration + 30)
            except subprocess.TimeoutExpired:
                os.killpg(wrk.pid, signal.SIGKILL)
                out, _ = wrk.communicate()
        finally:
            srv.kill()  # the whole group: a HUP's successor too
            srv.close()
        events = bu.perf_events(data) if use_perf else []
    refused = [t - t_sig for t, _, what in events if what == "ECONNREFUSED"]
    broken = [(t - t_sig, call, what) for t, call, what in events if what != "ECONNREFUSED"]
    summary = next((line for line in srv.lines if "stopped:" in line), "")
    return {
        "wrk": bu.parse_wrk(out),
        "code": code,
        "exit_s": exit_s,
        "summary": summary.split("INFO ", 1)[-1],
        "perf": use_perf,
        "refused": refused,
        "broken": broken,
    }


def bench_loss(runs: int, duration: float, at: float, signame: str) -> str:
    use_perf = bu.perf_available()
    signum = getattr(signal, "SIG" + signame)
    rows = []
    for i in range(runs):
        run = loss_run(signum, duration, at, use_perf)
        rows.append(http_load.loss_row(f"graceserve WSGI {signame}", i + 1, run))
        bu.say(f"  {signame} run {i + 1}/{runs}: broken {rows[-1][6]}, exit {run['code']}")
    table = bu.table(
        ["run", "requests", "read err", "write err", "timeouts", "non-2xx", "broken",
         "refused", "1st refused ms", "exit", "exit s"],
        rows,
        title=f"(b) wrk -t2 -c50 -d{round(duration)}s keep-alive on the WSGI app, "
        f"SIG{signame} at {at:g} s",
    )  # fmt: skip
    total = sum(int(str(row[6])) for row in rows)
    note = "" if use_perf else " (no perf: refusals not told apart from write errors)"
    return f"{table}\nbroken requests over {runs} runs: {total}{note}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--only", choices=["throughput", "loss"])
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 5, quick 2)")
    parser.add_argument("--runs", type=int, help="loss runs per signal (default 5, quick 2)")
    parser.add_argument(
        "--signal", choices=["TERM", "HUP"], action="append",
        help="stop signal(s) for the loss runs (default: TERM and HUP)",
    )  # fmt: skip
    parser.add_argument("--waitress-threads", type=int, default=16)
    parser.add_argument("--gthread-threads", type=int, default=16)
    args = parser.parse_args()
    rounds, runs, duration = (2, 2, 3.0) if args.quick else (5, 5, 5.0)
    print(bu.header("bench/wsgi_load.py: graceserve WSGI under wrk", sys.argv))
    if args.only in (None, "throughput"):
        text = bench_throughput(
            args.rounds or rounds, duration, args.waitress_threads, args.gthread_threads
        )
        print(text, flush=True)
    if args.only in (None, "loss"):
        for signame in args.signal or ["TERM", "HUP"]:
            print(bench_loss(args.runs or runs, 6.0, 3.0, signame), flush=True)


if __name__ == "__main__":
    main()
