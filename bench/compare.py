"""The published comparison: graceserve next to the servers users would pick instead.

Setup once (root): ``bash bench/setup`` (wrk and linux-perf from apt; gunicorn,
waitress, cheroot, matplotlib from PyPI).  Run from the repository root:

    python bench/compare.py            # full run (~8 min on 2 cores), writes docs/
    python bench/compare.py --quick    # 1 round, shorter wrk runs (~3 min)
    python bench/compare.py --servers graceserve,stdlib --scenarios 1,2 --out /tmp/cmp

Servers (the same app everywhere: ``GET /`` hello, ``GET /slow?seconds=N``;
see bench/peers.py), one process each (gunicorn: one worker), 50 worker
threads where the server has a pool:

- graceserve: ``python -m graceserve peers:HelloHandler`` (the stdlib peers' own handler);
- graceserve (WSGI): ``python -m graceserve peers:wsgi_app``, the very WSGI app that
  gunicorn, waitress and cheroot serve;
- stdlib (plain): ThreadingHTTPServer, ``serve_forever()`` in the main thread,
  no signal handler: SIGTERM kills it (exit -15, i.e. 143 in a shell);
- stdlib (naive): the same with the SIGTERM handler most blog posts suggest
  (``shutdown()`` in a thread, then ``server_close()``);
- gunicorn gthread (--threads 50) and gunicorn sync, ``-w 1``;
- waitress (threads=50); cheroot (numthreads=50, ``serve()`` in a thread, ``stop()`` on SIGTERM).

Scenarios, each one run for every server, servers rotated each round:

1. 20 in-flight ``GET /slow?seconds=2``, SIGTERM 0.3 s after they were sent;
   a new connection 100 ms after SIGTERM; exit code and SIGTERM-to-exit time.
2. 10 idle keep-alive connections (one request answered each), SIGTERM 0.5 s
   later: what each client socket sees (FIN, RST, still open) and when.
3. ``wrk -t2 -c50`` keep-alive load on ``GET /``, SIGTERM mid-run: wrk's errors.
4. A second SIGTERM, or a SIGINT, 0.2 s into the drain of 5 in-flight requests.
5. Throughput and latency of ``GET /`` (``wrk -t2 -c50 --latency``), medians.

Prints the report (markdown) and writes it to OUT/comparison.md, with the
chart OUT/comparison.png (matplotlib, Agg).  Only 127.0.0.1, every wait
bounded, only processes started here are signalled (by pid or process group).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import importlib.metadata
import importlib.util
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import benchutil as bu
import http_load

PY = sys.executable
PEERS = str(bu.BENCH / "peers.py")
THREADS = 50


# -- servers --------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A server to compare: its name, the package it needs, its command for a port."""

    name: str
    package: str | None  # distribution needed (None: stdlib / this repository)
    make: Callable[[int], list[str]]


SPECS: tuple[Spec, ...] = (
    Spec(
        "graceserve",
        None,
        lambda p: [PY, "-m", "graceserve", "peers:HelloHandler", "--bind", f"{bu.HOST}:{p}"],
    ),
    # The WSGI section: graceserve serving the very WSGI app the WSGI peers serve.
    Spec(
        "graceserve (WSGI)",
        None,
        lambda p: [PY, "-m", "graceserve", "peers:wsgi_app", "--bind", f"{bu.HOST}:{p}"],
    ),
    Spec("stdlib (plain)", None, lambda p: [PY, PEERS, "stdlib-plain", "--port", str(p)]),
    Spec("stdlib (naive)", None, lambda p: [PY, PEERS, "stdlib", "--port", str(p)]),
    Spec("gunicorn gthread", "gunicorn", lambda p: http_load.gunicorn_cmd(p, "gthread", THREADS)),
    Spec("gunicorn sync", "gunicorn", lambda p: http_load.gunicorn_cmd(p, "sync", 0)),
    Spec(
        "waitress",
        "waitress",
        lambda p: [PY, PEERS, "waitress", "--threads", str(THREADS), "--port", str(p)],
    ),
    Spec(
        "cheroot",
        "cheroot",
        lambda p: [PY, PEERS, "cheroot", "--threads", str(THREADS), "--port", str(p)],
    ),
)


def available(spec: Spec) -> bool:
    return spec.package is None or importlib.util.find_spec(spec.package) is not None


def select_specs(filters: Sequence[str] | None) -> list[Spec]:
    """The servers whose name contains one of ``filters`` (all if none)."""
    if not filters:
        return list(SPECS)
    wanted = [f.strip().lower() for f in filters if f.strip()]
    return [s for s in SPECS if any(f in s.name.lower() for f in wanted)]


def start(spec: Spec) -> bu.Server:
    port = bu.free_port()
    return bu.Server(spec.name, spec.make(port)).start(port=port, timeout=30)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def wrk_version() -> str:
    try:
        out = subprocess.run(
            ["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    return " ".join((out.stdout + out.stderr).split()[1:2]) or "?"


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


# -- configuration --------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    rounds: int = 2
    in_flight: int = 20
    slow: float = 2.0
    sigterm_after: float = 0.3  # after the in-flight requests were sent
    probe_after: float = 0.1  # new connection, after SIGTERM
    idle_conns: int = 10
    idle_wait: float = 0.5  # after the last response, before SIGTERM
    second_in_flight: int = 5
    second_after: float = 0.2  # second signal, after the first
    wrk_duration: float = 6.0
    wrk_sigterm_at: float = 3.0
    tput_rounds: int = 3
    tput_duration: float = 5.0
    warmup: bool = True
    exit_limit: float = 15.0  # longest wait for a server to exit after a signal


MODES = {
    "full": Config(),
    "quick": Config(rounds=1, wrk_duration=4.0, wrk_sigterm_at=2.0, tput_rounds=1,
                    tput_duration=3.0),
    # For tests: the harness's own sanity only, numbers meaningless.
    "sanity": Config(rounds=1, in_flight=3, slow=0.5, sigterm_after=0.2, idle_conns=2,
                     idle_wait=0.3, second_in_flight=2, second_after=0.1, wrk_duration=1.0,
                     wrk_sigterm_at=0.5, tput_rounds=1, tput_duration=1.0, warmup=False,
                     exit_limit=5.0),
}  # fmt: skip


# -- clients --------------------------------------------------------------------


def outcome(exc: BaseException) -> str:
    """What a client saw, in words."""
    if isinstance(exc, http.client.RemoteDisconnected):  # also a ConnectionResetError
        return "no response"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, (http.client.IncompleteRead, http.client.BadStatusLine)):
        return "no response"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


def slow_client(
    port: int, seconds: float, timeout: float, sent: threading.Barrier, out: list[str]
) -> None:
    conn = http.client.HTTPConnection(bu.HOST, port, timeout=timeout)
    try:
        try:
            conn.request("GET", f"/slow?seconds={seconds:g}")
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                sent.wait(10)
        resp = conn.getresponse()
        resp.read()
        out.append("completed" if resp.status == 200 else f"HTTP {resp.status}")
    except Exception as exc:
        out.append(outcome(exc))
    finally:
        conn.close()


def probe_new(port: int, timeout: float, out: list[str]) -> None:
    """A new connection: refused, or accepted and then what."""
    try:
        sock = socket.create_connection((bu.HOST, port), timeout=1.0)
    except ConnectionRefusedError:
        out.append("refused")
        return
    except OSError as exc:
        out.append(f"connect {type(exc).__name__}")
        return
    with sock:
        sock.settimeout(timeout)
        data = b""
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            out.append("accepted, then reset" if not data else "accepted, reset mid-answer")
            return
        except TimeoutError:
            out.append("accepted, no answer")
            return
        except OSError as exc:
            out.append(f"accepted, {type(exc).__name__}")
            return
    if data.startswith(b"HTTP/1.") and data[9:12] == b"200":
        out.append("accepted, served 200")
    elif data:
        out.append(f"accepted, {data[9:12].decode(errors='replace')}")
    else:
        out.append("accepted, then closed")


def exit_text(code: int | None) -> str:
    if code is None:
        return "killed"
    if code < 0:
        return f"{code} ({signal.Signals(-code).name})"
    return str(code)


# -- 1. in-flight requests at SIGTERM ---------------------------------------------


def inflight_run(spec: Spec, cfg: Config) -> dict[str, object]:
    srv = start(spec)
    results: list[str] = []
    probe: list[str] = []
    sent = threading.Barrier(cfg.in_flight + 1)
    timeout = cfg.slow + cfg.exit_limit + 5
    clients = [
        threading.Thread(target=slow_client, args=(srv.port, cfg.slow, timeout, sent, results))
        for _ in range(cfg.in_flight)
    ]
    prober = threading.Thread(target=probe_new, args=(srv.port, cfg.exit_limit + 5, probe))
    try:
        for t in clients:
            t.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            sent.wait(10)
        time.sleep(cfg.sigterm_after)  # bench timing, not synchronisation: the scenario
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        time.sleep(max(0.0, t0 + cfg.probe_after - time.monotonic()))
        prober.start()
        code = srv.wait(cfg.exit_limit)
        exit_s = time.monotonic() - t0 if code is not None else float("nan")
    finally:
        srv.close()  # a server still up is killed here: that ends every client below
        for t in clients:
            t.join(timeout)
        if prober.ident is not None:
            prober.join(timeout)
    return {
        "completed": results.count("completed"),
        "reset": results.count("reset"),
        "refused": results.count("refused"),
        "no response": results.count("no response"),
        "other": len(results) - sum(results.count(k) for k in
                                    ("completed", "reset", "refused", "no response")),
        "exit": exit_text(code),
        "exit_s": exit_s,
        "new conn": probe[0] if probe else "-",
    }  # fmt: skip


# -- 2. idle keep-alive connections at SIGTERM --------------------------------------


def _closed_now(sock: socket.socket) -> str | None:
    """'FIN' or 'RST' if the peer has closed ``sock``, None if it is still open."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return None
    try:
        data = sock.recv(4096, socket.MSG_PEEK)
    except ConnectionResetError:
        return "RST"
    except OSError:
        return "error"
    return "FIN" if not data else "data"


def idle_run(spec: Spec, cfg: Config) -> dict[str, object]:
    srv = start(spec)
    conns: list[http.client.HTTPConnection] = []
    socks: list[socket.socket] = []
    seen: dict[int, tuple[str, float]] = {}
    code: int | None = None
    try:
        for _ in range(cfg.idle_conns):
            conn = http.client.HTTPConnection(bu.HOST, srv.port, timeout=5)
            conns.append(conn)
            conn.request("GET", "/")
            conn.getresponse().read()
        time.sleep(cfg.idle_wait)  # the scenario: idle for a while
        socks = [c.sock for c in conns if c.sock is not None]  # None: closed by the server
        for i, sock in enumerate(socks):
            if _closed_now(sock) is not None:
                seen[i] = ("before", 0.0)
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        deadline = t0 + cfg.exit_limit
        while len(seen) < len(socks) and time.monotonic() < deadline:
            pending = [s for i, s in enumerate(socks) if i not in seen]
            select.select(pending, [], [], min(0.05, max(0.0, deadline - time.monotonic())))
            now = time.monotonic() - t0
            for i, sock in enumerate(socks):
                if i not in seen and (what := _closed_now(sock)) is not None:
                    seen[i] = (what, now)
        code = srv.wait(max(0.0, deadline - time.monotonic()))
        exit_s = time.monotonic() - t0 if code is not None else float("nan")
    finally:
        srv.close()
        for c in conns:
            c.close()
    after = [v for v in seen.values() if v[0] != "before"]
    return {
        "closed before": cfg.idle_conns - len(socks) + len(seen) - len(after),
        "FIN": sum(1 for w, _ in after if w == "FIN"),
        "RST": sum(1 for w, _ in after if w == "RST"),
        "open at exit limit": len(socks) - len(seen),
        "last close s": max((t for _, t in after), default=float("nan")),
        "exit": exit_text(code),
        "exit_s": exit_s,
    }


# -- 3. wrk keep-alive load, SIGTERM mid-run ------------------------------------------


def wrk_run(spec: Spec, cfg: Config, use_perf: bool) -> dict[str, object]:
    srv = start(spec)
    with bu.tempfile_dir() as tmp:
        data = os.path.join(tmp, "wrk.perf")
        prefix = bu.perf_prefix(data) if use_perf else []
        code: int | None = None
        try:
            wrk = subprocess.Popen(
                [*prefix, *bu.wrk_command(srv.port, cfg.wrk_duration)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                time.sleep(cfg.wrk_sigterm_at)  # the scenario: SIGTERM mid-run
                t_sig = time.monotonic()
                srv.signal(signal.SIGTERM)
                code = srv.wait(cfg.exit_limit)
                exit_s = time.monotonic() - t_sig if code is not None else float("nan")
                out, _ = wrk.communicate(timeout=cfg.wrk_duration + cfg.exit_limit + 30)
            finally:
                if wrk.poll() is None:
                    os.killpg(wrk.pid, signal.SIGKILL)
                    wrk.communicate()
        finally:
            srv.close()
        events = bu.perf_events(data) if use_perf else []
    return {
        **bu.loss_counts(out, events, use_perf),
        "exit": exit_text(code),
        "exit_s": exit_s,
    }


# -- 4. a second signal during the drain ------------------------------------------------


def second_run(spec: Spec, cfg: Config, second: signal.Signals) -> dict[str, object]:
    srv = start(spec)
    results: list[str] = []
    sent = threading.Barrier(cfg.second_in_flight + 1)
    timeout = cfg.slow + cfg.exit_limit + 5
    clients = [
        threading.Thread(target=slow_client, args=(srv.port, cfg.slow, timeout, sent, results))
        for _ in range(cfg.second_in_flight)
    ]
    try:
        for t in clients:
            t.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            sent.wait(10)
        time.sleep(cfg.sigterm_after)  # the scenario's timing
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        first_code = srv.wait(cfg.second_after)
        t1 = time.monotonic()
        if first_code is None:
            with contextlib.suppress(ProcessLookupError):
                srv.signal(second)
            code = srv.wait(cfg.exit_limit)
        else:
            code = first_code
        after_second = time.monotonic() - t1 if code is not None else float("nan")
        if first_code is not None:
            after_second = float("nan")
        exit_s = time.monotonic() - t0 if code is not None else float("nan")
    finally:
        srv.close()
        for t in clients:
            t.join(timeout)
    return {
        "second": f"TERM+{second.name.removeprefix('SIG')}",
        "completed": results.count("completed"),
        "cut": len(results) - results.count("completed"),
        "exit": exit_text(code) + (" (on 1st)" if first_code is not None else ""),
        "2nd->exit s": after_second,
        "exit_s": exit_s,
    }


# -- 5. throughput ---------------------------------------------------------------------


def throughput(specs: Sequence[Spec], cfg: Config) -> dict[str, list[bu.WrkResult]]:
    servers: list[bu.Server] = []
    results: dict[str, list[bu.WrkResult]] = {s.name: [] for s in specs}
    try:
        for spec in specs:
            servers.append(start(spec))
        if cfg.warmup:
            for srv in servers:
                http_load.run_wrk(srv.port, 1)  # warm-up, not counted
        for r in range(cfg.tput_rounds):
            shift = r % len(servers)
            for srv in servers[shift:] + servers[:shift]:
                res = http_load.run_wrk(srv.port, cfg.tput_duration)
                results[srv.name].append(res)
                bu.say(f"  5. round {r + 1}/{cfg.tput_rounds} {srv.name}: {res.rps:,.0f} req/s")
    finally:
        for srv in servers:
            srv.stop(5)
            srv.close()
    return results


# -- rounds, aggregation, report ------------------------------------------------------------


def interleaved(
    specs: Sequence[Spec], rounds: int, label: str, run: Callable[[Spec], dict[str, object]]
) -> dict[str, list[dict[str, object]]]:
    """``run`` for every server, ``rounds`` times, the order rotated by one each round."""
    out: dict[str, list[dict[str, object]]] = {s.name: [] for s in specs}
    for r in range(rounds):
        shift = r % len(specs)
        for spec in [*specs[shift:], *specs[:shift]]:
            try:
                res = run(spec)
            except RuntimeError as exc:  # did not start
                res = {"error": str(exc)[:80]}
            out[spec.name].append(res)
            bu.say(f"  {label} round {r + 1}/{rounds} {spec.name}: {res}")
    return out


def agg(values: Sequence[object]) -> object:
    """One cell for several rounds: the value if all agree, else a range or the median."""
    if not values:
        return "-"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        ints = [int(v) for v in values]  # type: ignore[call-overload]
        lo, hi = min(ints), max(ints)
        return lo if lo == hi else f"{lo}-{hi}"
    if all(isinstance(v, (int, float)) for v in values):
        return bu.median([float(v) for v in values])  # type: ignore[arg-type]
    uniq = list(dict.fromkeys(str(v) for v in values))
    return " / ".join(uniq)


def md_rows(res: dict[str, list[dict[str, object]]], keys: Sequence[str]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, runs in res.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            rows.append([name, *(["did not start"] + ["-"] * (len(keys) - 1))])
            continue
        rows.append([name, *(agg([r[k] for r in good]) for k in keys)])
    return rows


def numbers(res: dict[str, list[dict[str, object]]], key: str) -> dict[str, float]:
    """Median of ``key`` per server (for the chart)."""
    out = {}
    for name, runs in res.items():
        vals = [float(r[key]) for r in runs if isinstance(r.get(key), (int, float))]  # type: ignore[arg-type]
        out[name] = bu.median(vals)
    return out


def write_chart(path: Path, panels: list[tuple[str, dict[str, float]]]) -> None:
    """Horizontal bars, one panel per measure, the servers in the same order everywhere."""
    import matplotlib  # bench-only dependency, imported only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (title, data) in zip(axes[0], panels, strict=True):
        names = list(data)[::-1]
        vals = [data[n] for n in names]
        shown = [0.0 if v != v else v for v in vals]  # NaN -> 0 bar, labelled n/a
        colors = ["#2a7ab9" if n.startswith("graceserve") else "#9a9a9a" for n in names]
        ax.barh(names, shown, color=colors)
        for y, v in enumerate(vals):
            ax.text(
                0 if v != v else v,
                y,
                " n/a" if v != v else f" {v:,.0f}" if v == int(v) or v >= 100 else f" {v:,.1f}",
                va="center",
                fontsize=8,
            )
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 round, shorter runs")
    mode.add_argument("--sanity", action="store_true", help="tiny runs, for the tests")
    parser.add_argument("--servers", help="comma-separated name fragments, e.g. graceserve,stdlib")
    parser.add_argument("--scenarios", default="1,2,3,4,5", help="e.g. 1,2,5")
    parser.add_argument("--rounds", type=int, help="rounds of scenarios 1-4 and 5")
    parser.add_argument("--out", default=str(bu.ROOT / "docs"), help="where to write the report")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    cfg = MODES["quick" if args.quick else "sanity" if args.sanity else "full"]
    if args.rounds:
        cfg = replace(cfg, rounds=args.rounds, tput_rounds=args.rounds)
    scenarios = {int(x) for x in args.scenarios.split(",") if x.strip()}
    chosen = select_specs(args.servers.split(",") if args.servers else None)
    specs = [s for s in chosen if available(s)]
    missing = [s for s in chosen if not available(s)]
    wrk = have_wrk()
    use_perf = wrk and 3 in scenarios and bu.perf_available()
    os.environ.pop("GRACESERVE_BIND", None)
    command = "python bench/compare.py" + "".join(f" {a}" for a in argv)
    versions = {
        "graceserve": version("graceserve"),
        "gunicorn": version("gunicorn"),
        "waitress": version("waitress"),
        "cheroot": version("cheroot"),
        "wrk": wrk_version(),
    }
    out = [
        "# graceserve compared with the servers users pick instead",
        "",
        f"Command: `{command}` (after `bash bench/setup`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {os.cpu_count()} cores (`nproc`), {platform.system()} {platform.release()}, "
        f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])} at start; "
        f"Python {platform.python_version()}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Rounds: {cfg.rounds} per SIGTERM scenario, {cfg.tput_rounds} for throughput, the order "
        "of the servers rotated each round; a cell shows the value if every round agreed, else "
        "the range (counts) or the median (times).",
        "",
        "Servers, one process each (gunicorn: `-w 1`), "
        f"{THREADS} worker threads where there is a pool, the same app everywhere "
        "(`bench/peers.py`): graceserve serving the stdlib peers' own `HelloHandler`, and "
        "**graceserve (WSGI)** serving `peers:wsgi_app`, the WSGI app the WSGI peers serve; "
        "**stdlib (plain)** = `ThreadingHTTPServer.serve_forever()` without a signal handler "
        "(SIGTERM kills it); **stdlib (naive)** = the SIGTERM handler most blog posts suggest, "
        "`shutdown()` in a thread then `server_close()`; gunicorn gthread / sync; waitress; "
        "cheroot as its docs show it (`serve()` in a thread, `server.stop()` once SIGTERM "
        "arrives; calling `stop()` from inside a SIGTERM handler deadlocks when `serve()` runs in "
        "the main thread: the first version of this bench found that).",
    ]
    if missing:
        out.append(
            "Not run (package missing; `bash bench/setup`): "
            + ", ".join(s.name for s in missing)
            + "."
        )
    panels: list[tuple[str, dict[str, float]]] = []

    if 1 in scenarios and specs:
        bu.say("1. in-flight requests at SIGTERM ...")
        res = interleaved(specs, cfg.rounds, "1.", lambda s: inflight_run(s, cfg))
        keys = ["completed", "reset", "no response", "refused", "other", "exit", "exit_s",
                "new conn"]  # fmt: skip
        out += [
            "",
            f"## 1. {cfg.in_flight} in-flight `GET /slow?seconds={cfg.slow:g}`, SIGTERM at "
            f"{cfg.sigterm_after:g} s",
            "",
            bu.md_table(
                ["server", "completed", "reset", "no response", "refused", "other", "exit code",
                 "SIGTERM->exit s", f"new connection at +{cfg.probe_after * 1e3:g} ms"],
                md_rows(res, keys),
            ),
            "",
            "completed: 200 received; reset: ECONNRESET; no response: the connection closed "
            "without a response; exit code: as `Popen` reports it (-15 = killed by SIGTERM, "
            "143 in a shell); killed: still running after "
            f"{cfg.exit_limit:g} s, SIGKILLed by the bench.",
        ]  # fmt: skip
        panels.append(
            (f"1. completed of {cfg.in_flight} in-flight at SIGTERM", numbers(res, "completed"))
        )

    if 2 in scenarios and specs:
        bu.say("2. idle keep-alive connections at SIGTERM ...")
        res = interleaved(specs, cfg.rounds, "2.", lambda s: idle_run(s, cfg))
        keys = ["closed before", "FIN", "RST", "open at exit limit", "last close s", "exit",
                "exit_s"]  # fmt: skip
        out += [
            "",
            f"## 2. {cfg.idle_conns} idle keep-alive connections, SIGTERM "
            f"{cfg.idle_wait:g} s after their last response",
            "",
            bu.md_table(
                ["server", "closed before SIGTERM", "FIN", "RST", "still open", "last close s",
                 "exit code", "SIGTERM->exit s"],
                md_rows(res, keys),
            ),
            "",
            "What each client socket sees after SIGTERM: FIN (a clean close: the client "
            "reconnects for its next request), RST, or nothing before the server exits. "
            "'closed before SIGTERM': the server had already closed the connection "
            "(no keep-alive).",
        ]  # fmt: skip

    if 3 in scenarios and specs:
        if not wrk:
            out += ["", "## 3. wrk under SIGTERM: skipped, wrk is not installed"]
        else:
            bu.say("3. wrk keep-alive load, SIGTERM mid-run ...")
            res = interleaved(specs, cfg.rounds, "3.", lambda s: wrk_run(s, cfg, use_perf))
            keys = ["requests", "read err", "write err", "timeouts", "non-2xx", "broken",
                    "refused", "exit", "exit_s"]  # fmt: skip
            out += [
                "",
                f"## 3. `wrk -t2 -c50 -d{round(cfg.wrk_duration)}s` keep-alive on `GET /`, "
                f"SIGTERM at {cfg.wrk_sigterm_at:g} s",
                "",
                bu.md_table(
                    ["server", "requests", "read err", "write err", "timeouts", "non-2xx",
                     "broken", "refused reconnects", "exit code", "SIGTERM->exit s"],
                    md_rows(res, keys),
                ),
                "",
                "broken = read err + write err + timeouts + non-2xx: requests or connections "
                "broken by the stop. wrk reconnects after every closed connection; once the "
                "listener is closed those reconnects are refused, which is expected and counted "
                "apart as 'refused reconnects'. wrk 4.1 never checks a non-blocking connect's "
                "result, so a refused connect shows up as a *write* error (ECONNREFUSED), not a "
                "connect error. "
                + (
                    "wrk ran under `perf record` (in-kernel filter on its failed read/write "
                    "syscalls) and the ECONNREFUSED writes were taken out of 'write err'."
                    if use_perf
                    else "perf was not available: 'write err' includes the refused reconnects "
                    "(an upper bound on broken), and 'refused' shows only wrk's connect errors "
                    "(`N+?`)."
                ),
            ]  # fmt: skip
            panels.append(("3. broken under wrk at SIGTERM (fewer is better)",
                           numbers(res, "broken")))  # fmt: skip

    if 4 in scenarios and specs:
        bu.say("4. a second signal during the drain ...")
        res = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            run_second = functools.partial(second_run, cfg=cfg, second=sig)
            part = interleaved(specs, cfg.rounds, f"4. {sig.name}", run_second)
            for name, part_runs in part.items():
                res[f"{name}, TERM then {sig.name.removeprefix('SIG')}"] = part_runs
        keys = ["completed", "cut", "exit", "2nd->exit s", "exit_s"]
        out += [
            "",
            f"## 4. A second signal {cfg.second_after:g} s into the drain of "
            f"{cfg.second_in_flight} in-flight `GET /slow?seconds={cfg.slow:g}`",
            "",
            bu.md_table(
                ["server, signals", "completed", "cut", "exit code", "2nd signal->exit s",
                 "1st signal->exit s"],
                md_rows(res, keys),
            ),
            "",
            "A second TERM or INT usually means 'stop now'. '(on 1st)': the process was already "
            "gone when the second signal was due; killed: still running "
            f"{cfg.exit_limit:g} s after the second signal, SIGKILLed by the bench. graceserve "
            "cuts every connection at the second signal, then gives the cut handlers up to 0.1 s "
            "(never past the grace) to return before it exits; `/slow` sleeps, so that moment "
            "is used in full. cheroot: with the docs pattern (`try: ... finally: server.stop()`), "
            "a SIGINT during `stop()` raises KeyboardInterrupt inside it; where this table says "
            "killed, the process never exited (cause not investigated further).",
        ]  # fmt: skip

    if 5 in scenarios and specs:
        if not wrk:
            out += ["", "## 5. throughput: skipped, wrk is not installed"]
        else:
            bu.say("5. throughput ...")
            tput = throughput(specs, cfg)
            rows = []
            rps: dict[str, float] = {}
            for name, runs in tput.items():
                rps[name] = bu.median([x.rps for x in runs])
                errors = sum(x.connect + x.read + x.write + x.timeout + x.non2xx for x in runs)
                rows.append([
                    name,
                    rps[name],
                    bu.median([x.latency.get("50%", float("nan")) for x in runs]),
                    bu.median([x.latency.get("99%", float("nan")) for x in runs]),
                    errors,
                ])  # fmt: skip
            out += [
                "",
                f"## 5. Throughput: `wrk -t2 -c50 -d{round(cfg.tput_duration)}s --latency` on "
                f"`GET /`, {cfg.tput_rounds} round(s), medians",
                "",
                bu.md_table(["server", "req/s", "p50 ms", "p99 ms", "wrk errors"], rows),
                "",
                "wrk runs on the same 2-core machine as the server, so absolute numbers are low; "
                "compare the rows. The stock stdlib server does not set TCP_NODELAY: Nagle plus "
                "the client's delayed ACK stalls each keep-alive response ~40 ms, hence its "
                "throughput. gunicorn sync does not keep connections alive (one connect per "
                "request).",
            ]
            panels.append(("5. throughput, GET / (req/s)", rps))

    report = "\n".join(out) + "\n"
    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    chart = target / "comparison.png"
    if panels and not args.no_chart:
        if importlib.util.find_spec("matplotlib") is None:
            report += "\n(chart not written: matplotlib is not installed)\n"
        else:
            write_chart(chart, panels)
            report += f"\n![comparison chart]({chart.name})\n"
    (target / "comparison.md").write_text(report)
    print(report, end="")
    bu.say(f"wrote {target / 'comparison.md'}" + (f" and {chart}" if chart.exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
