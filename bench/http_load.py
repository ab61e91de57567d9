"""HTTP under wrk: zero loss at SIGTERM, and hello-route throughput against peers.

Setup once (root): ``bash bench/setup`` (wrk and linux-perf from apt; gunicorn,
waitress from PyPI).  Run from the repository root:

    python bench/http_load.py            # full run (~5 min)
    python bench/http_load.py --quick    # short run (~1 min)
    python bench/http_load.py --only loss|throughput [--rounds N] [--servers a,b]

What it measures:

(a) Zero loss under load.  ``wrk -t2 -c50 -d6s http://127.0.0.1:PORT/`` against
    ``python -m graceserve`` (demo app) and against the naive stdlib peer
    (``bench/peers.py stdlib``: ThreadingHTTPServer, HTTP/1.1, SIGTERM handler
    starting ``shutdown()`` in a thread, then ``server_close()``); SIGTERM 3 s
    after wrk starts.  From wrk's output: read errors, write errors, timeouts,
    non-2xx responses -- each one a request or connection broken by the stop.
    After the listener closes, wrk keeps reconnecting and every attempt is
    refused; those are expected and reported apart as "refused".  Note that
    wrk 4.1 counts them as *write* errors, not connect errors (it never checks
    a non-blocking connect's result; the first write fails with ECONNREFUSED),
    so wrk runs under ``perf record`` with in-kernel filters that record only
    its failed read/write syscalls (no measurable cost) and the refusals are
    subtracted by errno; every other failure is listed with its errno and its
    time relative to SIGTERM.  Also: exit code and time from SIGTERM to process
    exit (target < 1 s for graceserve).  Runs alternate the two servers;
    per-run numbers are printed.
(b) Throughput of ``GET /`` with ``wrk -t2 -c50 -d5s --latency`` against
    graceserve (demo app, and the peers' HelloHandler served by graceserve),
    stdlib ThreadingHTTPServer (plain; with TCP_NODELAY; with TCP_NODELAY and
    graceserve's listen backlog of 1024 instead of 5, i.e. the stock server
    fully tuned: what graceserve's own work costs is measured against that
    one), waitress (16 threads; its default is 4),
    and gunicorn sync and gthread (50 threads), one worker each like
    graceserve's one process.  All servers run for the whole benchmark; each
    round visits every server, the order rotating by one each round.
    Reported: medians of req/s, latency p50/p99 and server CPU per request
    (/proc, process and children) over the rounds, and graceserve / best peer.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import benchutil as bu

PY = sys.executable
PEERS = str(bu.BENCH / "peers.py")


def graceserve_cmd(port: int, target: str | None = None) -> list[str]:
    return [PY, "-m", "graceserve", *([target] if target else []), "--bind", f"{bu.HOST}:{port}"]


def gunicorn_cmd(port: int, worker: str, threads: int) -> list[str]:
    cmd = [PY, "-m", "gunicorn", "--chdir", str(bu.BENCH), "-w", "1", "-k", worker]
    if worker == "gthread":
        cmd += ["--threads", str(threads)]
    return [*cmd, "-b", f"{bu.HOST}:{port}", "--log-level", "warning", "peers:wsgi_app"]


# -- (a) zero loss at SIGTERM --------------------------------------------------


LOSS_KINDS = ("graceserve", "stdlib-naive")


def loss_run(kind: str, duration: float, sigterm_at: float, use_perf: bool) -> dict[str, object]:
    port = bu.free_port()
    stdlib = [PY, PEERS, "stdlib", "--port", str(port)]
    cmd = graceserve_cmd(port) if kind == "graceserve" else stdlib
    srv = bu.Server(kind, cmd).start(port=port)
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
            srv.signal(signal.SIGTERM)
            code = srv.wait(15)
            exit_s = time.monotonic() - t_sig if code is not None else float("nan")
            try:
                out, _ = wrk.communicate(timeout=duration + 30)
            except subprocess.TimeoutExpired:
                os.killpg(wrk.pid, signal.SIGKILL)
                out, _ = wrk.communicate()
        finally:
            srv.kill()
        events = bu.perf_events(data) if use_perf else []
    res = bu.parse_wrk(out)
    refused = [t - t_sig for t, _, what in events if what == "ECONNREFUSED"]
    broken = [(t - t_sig, call, what) for t, call, what in events if what != "ECONNREFUSED"]
    summary = next((line for line in srv.lines if "stopped:" in line), "")
    return {
        "wrk": res,
        "code": code,
        "exit_s": exit_s,
        "summary": summary.split("INFO ", 1)[-1],
        "perf": use_perf,
        "refused": refused,
        "broken": broken,
    }


def loss_row(kind: str, i: int, run: dict[str, object]) -> list[object]:
    w = run["wrk"]
    assert isinstance(w, bu.WrkResult)
    refused, broken = run["refused"], run["broken"]
    assert isinstance(refused, list)
    assert isinstance(broken, list)
    if run["perf"]:
        refused_writes = sum(1 for _ in refused)
        # wrk's write errors that were not refusals broke a connection.
        bad_writes = max(w.write - refused_writes, 0)
        n_refused: object = refused_writes + w.connect
        first = f"{min(refused) * 1e3:.1f}" if refused else "-"
    else:
        bad_writes, n_refused, first = w.write, f"{w.connect}+?", "?"
    n_broken = w.read + bad_writes + w.timeout + w.non2xx
    return [
        f"{kind} #{i}",
        w.requests,
        w.read,
        bad_writes,
        w.timeout,
        w.non2xx,
        n_broken,
        n_refused,
        first,
        run["code"],
        run["exit_s"],
    ]


def bench_loss(runs: int, duration: float, sigterm_at: float) -> str:
    use_perf = bu.perf_available()
    res: dict[str, list[dict[str, object]]] = {k: [] for k in LOSS_KINDS}
    for r in range(runs):
        for kind in LOSS_KINDS if r % 2 == 0 else LOSS_KINDS[::-1]:
            bu.say(f"  run {r + 1}/{runs} {kind} ...")
            res[kind].append(loss_run(kind, duration, sigterm_at, use_perf))
            time.sleep(0.5)
    rows = [loss_row(kind, i, run) for kind in LOSS_KINDS for i, run in enumerate(res[kind], 1)]
    lines = [
        bu.table(
            [
                "run",
                "requests",
                "read err",
                "write err",
                "timeouts",
                "non-2xx",
                "broken",
                "refused",
                "wrk 1st refused ms",
                "exit code",
                "SIGTERM->exit s",
            ],
            rows,
            title=f"(a) wrk -t2 -c50 -d{round(duration)}s on GET /, SIGTERM at {sigterm_at:g} s "
            f"({runs} runs each, interleaved; target for graceserve: 0 broken, exit < 1 s)",
        ),
        "",
        "broken = read err + write err + timeouts + non-2xx, as wrk counts them, except that",
        "'refused' (wrk's reconnects after the listener closed: expected) is taken out of",
        "wrk's write errors: wrk 4.1 never checks a non-blocking connect's result, so a refused",
        "connect shows up as a write() failing with ECONNREFUSED. "
        + (
            "Told apart with perf (in-kernel filter on wrk's failed read/write syscalls); "
            "'wrk 1st refused ms' is wrk's first refusal after SIGTERM."
            if use_perf
            else "perf is not available here: write errors are NOT split (refusals included)."
        ),
    ]
    for kind in LOSS_KINDS:
        mine = [row for row in rows if str(row[0]).startswith(kind + " ")]
        broken = [int(row[6]) for row in mine]  # type: ignore[call-overload]
        exits = [float(row[10]) for row in mine]  # type: ignore[arg-type]
        lines.append(
            f"{kind}: runs with 0 broken: {sum(b == 0 for b in broken)}/{len(broken)}, "
            f"broken median {bu.median(broken):g} max {max(broken)}, "
            f"SIGTERM->exit median {bu.median(exits):.3f} s max {max(exits):.3f} s"
        )
    if use_perf:
        lines.append("")
        lines.append("failed reads/writes other than refusals, as wrk saw them (perf):")
        for kind in LOSS_KINDS:
            for i, run in enumerate(res[kind], 1):
                broken_events = run["broken"]
                assert isinstance(broken_events, list)
                if not broken_events:
                    lines.append(f"  {kind} #{i}: none")
                    continue
                kinds = Counter(f"{call} {what}" for _, call, what in broken_events)
                times = [t * 1e3 for t, _, _ in broken_events]
                lines.append(
                    f"  {kind} #{i}: {dict(kinds)}, from {min(times):+.1f} to {max(times):+.1f} ms "
                    "after SIGTERM"
                )
    lines.append("graceserve's own summary lines:")
    lines += [f"  #{i}: {x['summary']}" for i, x in enumerate(res["graceserve"], 1)]
    return "\n".join(lines)


# -- (b) throughput ------------------------------------------------------------


def throughput_servers(waitress_threads: int, gthread_threads: int) -> list[bu.Server]:
    specs: list[tuple[str, object]] = [
        ("graceserve (demo)", lambda p: graceserve_cmd(p)),
        ("graceserve (peers.HelloHandler)", lambda p: graceserve_cmd(p, "peers:HelloHandler")),
        ("stdlib ThreadingHTTPServer", lambda p: [PY, PEERS, "stdlib", "--port", str(p)]),
        ("stdlib + TCP_NODELAY", lambda p: [PY, PEERS, "stdlib", "--nodelay", "--port", str(p)]),
        (
            "stdlib + TCP_NODELAY + backlog 1024",
            lambda p: [PY, PEERS, "stdlib", "--nodelay", "--backlog", "1024", "--port", str(p)],
        ),
        (
            f"waitress threads={waitress_threads}",
            lambda p: [PY, PEERS, "waitress", "--threads", str(waitress_threads), "--port", str(p)],
        ),
        ("gunicorn sync w=1", lambda p: gunicorn_cmd(p, "sync", 0)),
        (
            f"gunicorn gthread w=1 threads={gthread_threads}",
            lambda p: gunicorn_cmd(p, "gthread", gthread_threads),
        ),
    ]
    servers = []
    for name, make in specs:
        port = bu.free_port()
        servers.append(bu.Server(name, make(port)))  # type: ignore[operator]
        servers[-1].port = port
    return servers


ERROR_FIELDS = ("connect", "read", "write", "timeout", "non2xx")


def run_wrk(port: int, duration: float) -> bu.WrkResult:
    out = subprocess.run(
        bu.wrk_command(port, duration, latency=True),
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    ).stdout
    return bu.parse_wrk(out)


def bench_throughput(
    rounds: int, duration: float, wt: int, gt: int, only: list[str] | None = None
) -> str:
    servers = throughput_servers(wt, gt)
    if only:
        servers = [s for s in servers if any(o in s.name for o in only)]
    results: dict[str, list[bu.WrkResult]] = {s.name: [] for s in servers}
    cpu: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for srv in servers:
            srv.start(port=srv.port)
        for srv in servers:
            run_wrk(srv.port, 1)  # warm-up, not counted
        for r in range(rounds):
            shift = r % len(servers)
            for srv in servers[shift:] + servers[:shift]:
                cpu0 = srv.cpu_seconds()
                res = run_wrk(srv.port, duration)
                cpu[srv.name].append((srv.cpu_seconds() - cpu0) / max(res.requests, 1) * 1e6)
                results[srv.name].append(res)
                bu.say(f"  round {r + 1}/{rounds} {srv.name}: {res.rps:,.0f} req/s")
    finally:
        for srv in servers:
            srv.stop(5)
    rows = []
    med: dict[str, float] = {}
    for name, runs in results.items():
        rps = [x.rps for x in runs]
        med[name] = bu.median(rps)
        errors = [sum(getattr(x, k) for x in runs) for k in ERROR_FIELDS]
        rows.append(
            [
                name,
                med[name],
                min(rps),
                max(rps),
                bu.median([x.latency.get("50%", float("nan")) for x in runs]),
                bu.median([x.latency.get("99%", float("nan")) for x in runs]),
                bu.median(cpu[name]),
                "/".join(map(str, errors)) if any(errors) else "0",
            ]
        )
    ours_name = next((k for k in med if k.startswith("graceserve")), None)
    ours = med[ours_name] if ours_name else float("nan")
    for row in rows:
        row.append(f"{med[str(row[0])] / ours:.2f}")
    table = bu.table(
        [
            "server (GET /, 1 process)",
            "req/s med",
            "min",
            "max",
            "p50 ms",
            "p99 ms",
            "cpu us/req",
            "errors",
            "/ graceserve",
        ],
        rows,
        title=f"(b) wrk -t2 -c50 -d{round(duration)}s --latency, {rounds} rounds "
        "(order rotated each round)",
    )
    lines = [
        table,
        "cpu us/req: server CPU (process and children, /proc) per request, median over rounds;",
        "errors: wrk's connect/read/write/timeout/non-2xx summed over rounds (0 if none)",
        "",
    ]
    peers = {k: v for k, v in med.items() if not k.startswith("graceserve")}
    if ours_name and peers:
        best = max(peers, key=lambda k: peers[k])
        # Per-round ratio against the best peer, paired (same round, close in time).
        paired = [a.rps / b.rps for a, b in zip(results[ours_name], results[best], strict=True)]
        lines.append(
            f"{ours_name} / best peer ({best}): ratio of medians {ours / peers[best]:.2f}, "
            f"median of per-round ratios {bu.median(paired):.2f}"
        )
        for name in peers:
            if "NODELAY" in name:
                paired = [
                    a.rps / b.rps for a, b in zip(results[ours_name], results[name], strict=True)
                ]
                lines.append(
                    f"{ours_name} / {name}: ratio of medians {ours / med[name]:.2f}, "
                    f"median of per-round ratios {bu.median(paired):.2f}"
                )
        real = {k: v for k, v in peers.items() if not k.startswith("stdlib")}
        if real:
            best_real = max(real, key=lambda k: real[k])
            lines.append(
                f"{ours_name} / best graceful-stop peer ({best_real}): {ours / real[best_real]:.2f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--only", choices=["loss", "throughput"])
    parser.add_argument(
        "--waitress-threads", type=int, default=16, help="waitress threads (its default: 4)"
    )
    parser.add_argument(
        "--gthread-threads", type=int, default=50, help="gunicorn gthread threads per worker"
    )
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 5, quick 1)")
    parser.add_argument(
        "--servers", help="throughput: comma-separated name fragments, e.g. 'graceserve,NODELAY'"
    )
    args = parser.parse_args()
    runs, rounds, duration = (1, 1, 2.0) if args.quick else (5, 5, 5.0)
    loss_duration, sigterm_at = (4.0, 2.0) if args.quick else (6.0, 3.0)
    print(bu.header("bench/http_load.py: graceserve HTTP under wrk", sys.argv))
    print(
        subprocess.run(
            ["wrk", "--version"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        ).stdout.splitlines()[0]
    )
    if args.only in (None, "loss"):
        print()
        bu.say("(a) zero loss at SIGTERM ...")
        print(bench_loss(runs, loss_duration, sigterm_at))
    if args.only in (None, "throughput"):
        print()
        bu.say("(b) throughput ...")
        only = args.servers.split(",") if args.servers else None
        print(
            bench_throughput(
                args.rounds or rounds, duration, args.waitress_threads, args.gthread_threads, only
            )
        )


if __name__ == "__main__":
    main()
