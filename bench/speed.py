"""Speed side by side: graceserve against the compiled servers (granian, uWSGI) and uvicorn.

The measuring harness of issue 22.  Run from the repository root (wrk from
``bash bench/setup``; the peers and apps come from PyPI into a venv this script
creates and then reuses, ``bench/.venv-speed``, pinned in
``bench/speed-requirements.txt``):

    python bench/speed.py                  # every row, 3 interleaved rounds (~15 min)
    python bench/speed.py --quick          # one round, short runs (~5 min)
    python bench/speed.py --rows hello,c1000 --servers graceserve,granian
    python bench/speed.py --docs           # also rewrite docs/benchmarks.md's generated block

Servers (every one serves the same app module from bench/, WSGI):
graceserve (one process, and ``--workers 2``), granian ``--interface wsgi``
(1 and 2 workers), uWSGI ``--http11-socket`` (keep-alive) with 1 and 2
processes of 16 threads, uvicorn ``--interface wsgi`` (1 and 2 workers).

Rows (``--rows``, comma-separated):

- ``hello``, ``flask``, ``django``: ``wrk -t2 -c50`` keep-alive on ``GET /`` of
  bench/speed_hello.py (2-byte body), speed_flask.py (a JSON view) and
  speed_django.py (a JSON view, the default middleware); all servers of a row
  run for the whole row, the order rotated each round; medians.
- ``wait``: the same on bench/speed_wait.py, an app that sleeps 10 ms (waits
  on I/O): whether the requests in flight overlap (at most 5,000 req/s at
  ``-c50``).
- ``c1000``: hello at ``-c1000 --timeout 2s``: req/s, wrk timeouts (requests
  answered after more than 2 s), p99, and the connections still waiting to be
  accepted half-way (wrk never counts their unanswered requests).
- ``idle``: 10,000 idle keep-alive connections (each has had one request
  answered) on the one-process servers: the server's RSS and threads, how long
  a new client waits for its answer meanwhile, then SIGTERM: how many of the
  10,000 see a FIN, an RST or nothing, and the exit code.
- ``term``, ``hup``: ``wrk -t2 -c50`` on hello, the signal half-way: broken
  requests (read and write errors that are not refused reconnects, timeouts,
  non-2xx; bench/compare.py's counting, with perf when it is available).
  ``hup`` only for the servers that reload on SIGHUP.

Prints the tables (req/s, ratio to the best compiled peer with the same number
of processes) and writes every figure as JSON to ``bench/results/`` (gitignored).
The machine is shared and has 2 cores: quote the ratios, not the absolutes.
Only 127.0.0.1; every wait bounded; only processes started here are signalled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import benchutil as bu
import compare

from testsupport import procfs

VENV = bu.BENCH / ".venv-speed"
REQUIREMENTS = bu.BENCH / "speed-requirements.txt"
RESULTS = bu.BENCH / "results"
DOCS = bu.ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN GENERATED: bench/speed.py; everything up to END is replaced by its output -->"
END = "<!-- END GENERATED: bench/speed.py -->"
APPS = {
    "hello": "speed_hello:app",
    "flask": "speed_flask:app",
    "django": "speed_django:app",
    "wait": "speed_wait:app",
}
TPUT_ROWS = ("hello", "flask", "django", "wait", "c1000")
ROWS = (*TPUT_ROWS, "idle", "term", "hup")
EXIT_USAGE = 2


# -- servers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A server in one configuration: ``command(py, port, target, max_conns)`` starts it."""

    name: str
    family: str  # graceserve, granian, uwsgi, uvicorn
    processes: int
    reloads: bool  # whether SIGHUP reloads it (else SIGHUP's default action stops it)

    @property
    def compiled(self) -> bool:
        return self.family in ("granian", "uwsgi")

    def command(self, py: str, port: int, target: str, max_conns: int) -> list[str]:
        bindir, venv, n = Path(py).parent, Path(py).parent.parent, self.processes
        if self.family == "graceserve":
            return [
                py,
                "-m",
                "graceserve",
                target,
                "--bind",
                f"{bu.HOST}:{port}",
                *f"--log-level warning --workers {n} --max-connections {max_conns}".split(),
            ]
        if self.family == "granian":
            common = ["--interface", "wsgi", "--no-ws", "--log-level", "warning"]
            return [
                str(bindir / "granian"),
                *common,
                *f"--host {bu.HOST} --port {port}".split(),
                "--workers",
                str(n),
                # granian holds at most --backpressure (default: --backlog / workers)
                # connections: the counterpart of graceserve's --max-connections.
                "--backlog",
                str(max_conns),
                target,
            ]
        if self.family == "uwsgi":
            # http11-socket: uWSGI's own HTTP parser with keep-alive (http-socket closes each).
            return [
                str(bindir / "uwsgi"),
                "--http11-socket",
                f"{bu.HOST}:{port}",
                "--module",
                target,
                "--home",
                str(venv),
                *f"--master --processes {n} --threads 16".split(),
                *["--disable-logging", "--die-on-term", "--need-app", "--listen", "1024"],
            ]
        common = ["--interface", "wsgi", "--no-access-log", "--log-level", "warning"]
        return [
            py,
            "-m",
            "uvicorn",
            *common,
            *f"--host {bu.HOST} --port {port}".split(),
            "--workers",
            str(n),
            target,
        ]


PEERS = (
    Peer("graceserve 1", "graceserve", 1, True),
    Peer("granian 1", "granian", 1, True),
    Peer("uWSGI 1x16", "uwsgi", 1, True),
    Peer("uvicorn 1", "uvicorn", 1, False),
    Peer("graceserve 2", "graceserve", 2, True),
    Peer("granian 2", "granian", 2, True),
    Peer("uWSGI 2x16", "uwsgi", 2, True),
    Peer("uvicorn 2", "uvicorn", 2, True),
)


def select_peers(filters: str | None) -> list[Peer]:
    """The peers whose name contains one of the comma-separated fragments (all if none)."""
    if not filters:
        return list(PEERS)
    wanted = [f.strip().lower() for f in filters.split(",") if f.strip()]
    return [p for p in PEERS if any(f in p.name.lower() for f in wanted)]


def ensure_venv() -> str:
    """The bench venv's python: created, and the pinned peers installed, when missing."""
    py = VENV / "bin" / "python"
    probe = [str(py), "-c", "import granian, uvicorn, flask, django"]
    ok = py.exists() and (VENV / "bin" / "uwsgi").exists()
    if ok and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return str(py)
    bu.say(f"setting up {VENV} (uWSGI compiles with gcc: a few minutes) ...")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    return str(py)


def versions(py: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m\n"
        "for d in ('granian', 'uWSGI', 'uvicorn', 'Flask', 'Django'):\n"
        "  try: print(d, m.version(d))\n"
        "  except m.PackageNotFoundError: pass"
    )
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=False).stdout
    found = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    return {"python": platform.python_version(), "wrk": compare.wrk_version(), **found}


# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    rounds: int = 3
    duration: float = 5.0  # seconds of each c50 wrk run
    c1000_duration: float = 8.0
    warmup: bool = True
    idle_conns: int = 10_000
    idle_answer_limit: float = 60.0  # for the 10,000 first answers
    probes: int = 5  # new clients timed while the idle connections are held
    loss_rounds: int = 1
    loss_duration: float = 6.0
    exit_limit: float = 20.0


MODES = {
    "full": Config(),
    "quick": Config(rounds=1, duration=3.0, c1000_duration=5.0, idle_answer_limit=30.0,
                    loss_duration=4.0),
    # For tests: the harness's shape only, numbers meaningless.
    "tiny": Config(rounds=1, duration=1.0, c1000_duration=1.0, warmup=False, idle_conns=20,
                   idle_answer_limit=10.0, probes=1, loss_duration=2.0, exit_limit=10.0),
}  # fmt: skip


# -- throughput rows ----------------------------------------------------------------------


def wrk(
    port: int, connections: int, duration: float, server_pid: int | None = None
) -> tuple[bu.WrkResult, int, list[int]]:
    """``wrk -t2 -cN -dDs --latency --timeout 2s`` keep-alive on ``GET /``; how many
    connections waited in the listener's accept queue half-way through the run; and (with
    ``server_pid``) how the accepted ones were shared among its processes then."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
           "--timeout", "2s", f"http://{bu.HOST}:{port}/"]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as load:
        try:
            out, _ = load.communicate(timeout=max(1, round(duration)) / 2)
        except subprocess.TimeoutExpired:  # half-way: the run goes on
            queued = unaccepted(port)
            shares = split(server_pid, port) if server_pid is not None else []
            out, _ = load.communicate(timeout=duration + 60)
        else:
            queued, shares = 0, []
    return bu.parse_wrk(out), queued, shares


def split(server_pid: int, port: int) -> list[int]:
    """The connections to ``port`` each process of ``server_pid``'s tree holds, most first
    (processes holding none left out): whether a multi-process server shares its clients."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = set(), {server_pid}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
    ours = {
        row.inode
        for row in procfs.tcp_sockets(state=procfs.ESTABLISHED)
        if row.local_port == port and row.local_host == bu.HOST
    }
    counts = []
    for pid in tree:
        with contextlib.suppress(OSError):
            held = len(ours & procfs.socket_inodes(pid))
            if held:
                counts.append(held)
    return sorted(counts, reverse=True)


def unaccepted(port: int) -> int:
    """Connections to ``port`` that no server thread has accepted yet (all its listeners)."""
    rows = procfs.tcp_sockets(state=procfs.LISTEN)
    return sum(r.unread for r in rows if r.local_port == port and r.local_host == bu.HOST)


def start(peer: Peer, py: str, app: str, max_conns: int = 1100) -> bu.Server:
    port = bu.free_port()
    cmd = peer.command(py, port, APPS[app], max_conns)
    return bu.Server(peer.name, cmd).start(port=port, timeout=60)


def tput_row(row: str, peers: Sequence[Peer], py: str, cfg: Config) -> dict[str, Any]:
    """One throughput row: every peer started, rounds rotated; per peer its runs and medians."""
    app, conns = ("hello", 1000) if row == "c1000" else (row, 50)
    duration = cfg.c1000_duration if row == "c1000" else cfg.duration
    runs: dict[str, list[tuple[bu.WrkResult, int, list[int]]]] = {p.name: [] for p in peers}
    servers: list[bu.Server] = []
    errors: dict[str, str] = {}
    try:
        for peer in peers:
            try:
                servers.append(start(peer, py, app))
            except RuntimeError as exc:
                errors[peer.name] = str(exc)[:200]
        if cfg.warmup:
            for srv in servers:
                wrk(srv.port, conns, 1)
        for r in range(cfg.rounds):
            shift = r % max(1, len(servers))
            for srv in servers[shift:] + servers[:shift]:
                res, queued, shares = wrk(srv.port, conns, duration, srv.proc.pid)
                runs[srv.name].append((res, queued, shares))
                p99 = res.latency.get("99%", float("nan"))
                bu.say(
                    f"  {row} round {r + 1}/{cfg.rounds} {srv.name}: {res.rps:,.0f} req/s, "
                    f"timeouts {res.timeout}, p99 {p99:.1f} ms, connections per process "
                    f"{'/'.join(map(str, shares)) or '-'}"
                )
    finally:
        for srv in servers:
            srv.stop(10)
            srv.close()
    out: dict[str, Any] = {}
    for peer in peers:
        got = [res for res, _, _ in runs[peer.name]]
        if not got:
            out[peer.name] = {"error": errors.get(peer.name, "did not run")}
            continue
        out[peer.name] = {
            "rps": bu.median([x.rps for x in got]),
            "p50_ms": bu.median([x.latency.get("50%", float("nan")) for x in got]),
            "p99_ms": bu.median([x.latency.get("99%", float("nan")) for x in got]),
            "timeouts": [x.timeout for x in got],
            "errors": [x.connect + x.read + x.write + x.non2xx for x in got],
            "rounds": [x.rps for x in got],
            "unaccepted": [queued for _, queued, _ in runs[peer.name]],
            "split": [shares for _, _, shares in runs[peer.name]],
        }
    return out


# -- 10,000 idle keep-alive connections ---------------------------------------------------


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def answered(buf: bytes) -> bool:
    """Whether ``buf`` holds one whole response (a head and its Content-Length body)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", buf[:end])
    return m is not None and len(buf) >= end + 4 + int(m.group(1))


def open_idle(port: int, count: int, limit: float) -> tuple[list[socket.socket], float]:
    """``count`` connections, one request answered on each (non-blocking, at most 500
    connects in progress); those answered within ``limit`` s, and the seconds it took."""
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    began = time.monotonic()
    deadline = began + limit
    opened = in_progress = 0
    try:
        while len(done) < count and time.monotonic() < deadline:
            while opened < count and in_progress < 500:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((bu.HOST, port))
                sel.register(sock, selectors.EVENT_WRITE, None)
                opened += 1
                in_progress += 1
            for key, _ in sel.select(min(0.5, max(0.0, deadline - time.monotonic()))):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)  # for mypy: only sockets are registered
                if key.data is None:  # connected (or failed)
                    in_progress -= 1
                    if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        sel.unregister(conn)
                        conn.close()
                        continue
                    try:
                        conn.send(REQUEST)  # 31 bytes: always fits an empty send buffer
                    except OSError:
                        sel.unregister(conn)
                        conn.close()
                        continue
                    sel.modify(conn, selectors.EVENT_READ, b"")
                    continue
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    continue
                buf = key.data + data
                if answered(buf):
                    sel.unregister(conn)
                    done.append(conn)
                else:
                    sel.modify(conn, selectors.EVENT_READ, buf)
    except BaseException:
        for conn in done:
            conn.close()
        raise
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return done, time.monotonic() - began


def probe_ms(port: int, timeout: float = 10.0) -> float:
    """Milliseconds for a new client to connect and get its whole answer (NaN: none)."""
    began = time.monotonic()
    try:
        with socket.create_connection((bu.HOST, port), timeout=timeout) as sock:
            sock.sendall(REQUEST)
            buf = b""
            while not answered(buf):
                chunk = sock.recv(65536)
                if not chunk:
                    return float("nan")
                buf += chunk
    except OSError:
        return float("nan")
    return (time.monotonic() - began) * 1e3


def tree_status(pid: int) -> tuple[int, float]:
    """Threads and RSS (MiB) of ``pid`` and all its descendants."""
    threads, rss_kib, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, KeyError):
            threads += procfs.status_field(p, "Threads")
            rss_kib += procfs.status_field(p, "VmRSS")
        with contextlib.suppress(OSError):
            todo += [int(x) for x in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return threads, rss_kib / 1024


def watch_close(socks: list[socket.socket], deadline: float) -> dict[str, int]:
    """Until ``deadline``: how each socket ends (FIN, RST, data) or 'open'."""
    sel = selectors.DefaultSelector()
    seen = {"FIN": 0, "RST": 0, "data": 0}
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ)
    try:
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(min(0.5, max(0.0, deadline - time.monotonic()))):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)  # for mypy: only sockets are registered
                try:
                    what = "data" if conn.recv(4096) else "FIN"
                except OSError:  # ECONNRESET, mostly
                    what = "RST"
                seen[what] += 1
                sel.unregister(conn)
        seen["open"] = len(sel.get_map())
    finally:
        sel.close()
    return seen


def idle_run(peer: Peer, py: str, cfg: Config) -> dict[str, object]:
    """The idle row for one server: hold, measure, probe, SIGTERM, watch."""
    srv = start(peer, py, "hello", max_conns=cfg.idle_conns + 1000)
    socks: list[socket.socket] = []
    try:
        threads0, rss0 = tree_status(srv.proc.pid)
        socks, took = open_idle(srv.port, cfg.idle_conns, cfg.idle_answer_limit)
        threads, rss = tree_status(srv.proc.pid)
        probes = [probe_ms(srv.port) for _ in range(cfg.probes)]
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        closed = watch_close(socks, t0 + cfg.exit_limit)
        code = srv.wait(max(0.1, t0 + cfg.exit_limit - time.monotonic()))
        exit_s = time.monotonic() - t0 if code is not None else float("nan")
    finally:
        srv.close()
        for sock in socks:
            sock.close()
    return {
        "answered": len(socks),
        "open_s": took,
        "threads_before": threads0,
        "threads": threads,
        "rss_mib_before": rss0,
        "rss_mib": rss,
        "new_client_ms": bu.median(probes),
        "new_client_max_ms": max(probes),
        **closed,
        "exit": compare.exit_text(code),
        "exit_s": exit_s,
    }


# -- SIGTERM and SIGHUP under wrk -------------------------------------------------------------


def as_spec(peer: Peer, py: str) -> compare.Spec:
    return compare.Spec(peer.name, None, lambda p: peer.command(py, p, APPS["hello"], 1100))


def term_run(peer: Peer, py: str, cfg: Config, use_perf: bool) -> dict[str, object]:
    """bench/compare.py's scenario 3 (wrk -c50, SIGTERM half-way) on the hello app."""
    ccfg = replace(
        compare.MODES["full"],
        wrk_duration=cfg.loss_duration,
        wrk_sigterm_at=cfg.loss_duration / 2,
        exit_limit=cfg.exit_limit,
    )
    return compare.wrk_run(as_spec(peer, py), ccfg, use_perf)


def hup_run(peer: Peer, py: str, cfg: Config, use_perf: bool) -> dict[str, object]:
    """wrk -c50 on hello, SIGHUP half-way; the server keeps serving; broken requests counted
    as in bench/compare.py (refused reconnects apart), and whether it still answers after."""
    srv = start(peer, py, "hello")
    with bu.tempfile_dir() as tmp:
        data = os.path.join(tmp, "wrk.perf")
        prefix = bu.perf_prefix(data) if use_perf else []
        try:
            load = subprocess.Popen(
                [*prefix, *bu.wrk_command(srv.port, cfg.loss_duration)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                time.sleep(cfg.loss_duration / 2)  # the scenario: the signal half-way
                srv.signal(signal.SIGHUP)
                out, _ = load.communicate(timeout=cfg.loss_duration + cfg.exit_limit + 30)
            finally:
                if load.poll() is None:
                    os.killpg(load.pid, signal.SIGKILL)
                    load.communicate()
            alive = srv.proc.poll() is None and bu.http_ok(srv.port)
            code = srv.stop(cfg.exit_limit)
        finally:
            srv.close()
        events = bu.perf_events(data) if use_perf else []
    return {
        **bu.loss_counts(out, events, use_perf),
        "serving after": "yes" if alive else "no",
        "exit": compare.exit_text(code),
    }


# -- report -----------------------------------------------------------------------------------

Rows = dict[str, list[dict[str, object]]]  # server name -> one dict per round


def kilo(value: float) -> str:
    return "-" if value != value else f"{value / 1000:.1f}k"


def rps(cell: dict[str, Any] | None) -> float:
    return float(cell["rps"]) if cell and "rps" in cell else float("nan")


def best_compiled(row: dict[str, Any], peer: Peer, names: Sequence[str]) -> float:
    """The best req/s of granian and uWSGI with as many processes as ``peer`` (NaN: none ran)."""
    found = [
        rps(row.get(q.name))
        for q in PEERS
        if q.compiled and q.processes == peer.processes and q.name in names
    ]
    found = [v for v in found if v == v]
    return max(found) if found else float("nan")


def tput_tables(results: dict[str, dict[str, Any]], peers: Sequence[Peer]) -> str:
    """Req/s per row and server, and each server's ratio to the best compiled peer with
    the same number of processes."""
    names = [p.name for p in peers]
    req: list[list[object]] = []
    ratio: list[list[object]] = []
    for row, cells in results.items():
        line: list[object] = [row]
        for name in names:
            cell = cells.get(name)
            if not cell or "rps" not in cell:
                line.append("did not start")
            elif row == "c1000":
                line.append(
                    f"{kilo(rps(cell))}, {sum(cell['timeouts'])} t/o, p99 {cell['p99_ms']:.0f} ms, "
                    f"{max(cell['unaccepted'])} unaccepted"
                )
            else:
                line.append(kilo(rps(cell)))
        req.append(line)
        line = [row]
        for peer in peers:
            best = best_compiled(cells, peer, names)
            ok = best == best and best > 0
            line.append(f"{rps(cells.get(peer.name)) / best:.2f}x" if ok else "-")
        ratio.append(line)
    tables = [
        bu.md_table(["req/s (wrk -t2, keep-alive)", *names], req),
        bu.md_table(["ratio to the best of granian and uWSGI, same processes", *names], ratio),
    ]
    several = [p.name for p in peers if p.processes > 1]
    shared = [
        [row, *(shares_cell(cells.get(name)) for name in several)]
        for row, cells in results.items()
        if row != "c1000"
    ]
    if several and shared:
        tables.append(bu.md_table(["connections per process, half-way", *several], shared))
    return "\n\n".join(tables)


def shares_cell(cell: dict[str, Any] | None) -> str:
    """Each round's split of the connections among a server's processes: ``25/25, 49/1``."""
    rounds = cell.get("split", []) if cell else []
    return ", ".join("/".join(map(str, shares)) for shares in rounds if shares) or "-"


def rounds_table(runs: Rows) -> str:
    """One line per server, one column per key; several rounds agreed or ranged (compare.agg)."""
    keys = list(dict.fromkeys(k for rs in runs.values() for r in rs for k in r))
    return bu.md_table(["server", *keys], compare.md_rows(runs, keys))


def report(
    results: dict[str, Any], peers: Sequence[Peer], cfg: Config, meta: dict[str, Any]
) -> str:
    """The markdown report (printed, and the docs' generated block)."""
    parts = [
        f"Command: `{meta['command']}`, {meta['date']}; {meta['machine']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        f"{cfg.rounds} round(s) of {cfg.duration:g} s (c1000: {cfg.c1000_duration:g} s) per "
        "server, the order rotated each round, medians; every server serves the same module "
        "from bench/. The machine has 2 cores shared with wrk and other work: compare ratios.",
    ]
    tput = {k: v for k, v in results.items() if k in TPUT_ROWS}
    if tput:
        parts.append(tput_tables(tput, peers))
        parts.append(
            "hello, flask, django, wait: `-c50` (wait: an app that sleeps 10 ms, at most "
            "5,000 req/s with 50 connections). c1000: hello at `-c1000 --timeout 2s`; t/o = "
            "wrk timeouts (requests answered after more than 2 s) summed over the rounds, "
            "p99 the median of the rounds' (wrk counts answered requests only); "
            "unaccepted: connections waiting in the listener's accept queue half-way "
            "through a run (the most of the rounds): their requests are neither answered "
            "nor counted by wrk (uWSGI serves as many keep-alive connections at once "
            "as it has threads). Connections per process: how the accepted connections "
            "were shared among a server's processes half-way through each round."
        )
    if "idle" in results:
        parts += [
            f"{cfg.idle_conns:,} idle keep-alive connections (one request answered on "
            "each), then SIGTERM; threads and RSS of the server's process tree; "
            "new_client_ms: a new connection's GET answered, meanwhile:",
            rounds_table(results["idle"]),
        ]
    for row, what in (("term", "SIGTERM"), ("hup", "SIGHUP")):
        if row in results:
            parts += [
                f"`wrk -t2 -c50 -d{round(cfg.loss_duration)}s` on hello, {what} half-way "
                "(broken = read + write errors that are not refused reconnects + timeouts "
                "+ non-2xx):",
                rounds_table(results[row]),
            ]
    return "\n\n".join(parts) + "\n"


def rounds_row(row: str, peers: Sequence[Peer], py: str, cfg: Config, use_perf: bool) -> Rows:
    """The idle, term or hup row: a fresh server per run, the servers interleaved."""
    if row == "idle":
        chosen = [p for p in peers if p.processes == 1]
        rounds = 1
    else:
        chosen = [p for p in peers if row == "term" or p.reloads]
        rounds = cfg.loss_rounds
    by_name = {p.name: p for p in chosen}

    def one(spec: compare.Spec) -> dict[str, object]:
        peer = by_name[spec.name]
        if row == "idle":
            return idle_run(peer, py, cfg)
        return (term_run if row == "term" else hup_run)(peer, py, cfg, use_perf)

    return compare.interleaved([as_spec(p, py) for p in chosen], rounds, row, one)


def write_docs(text: str) -> None:
    page = DOCS.read_text()
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options; a bad one exits 2 with one line (argparse's usage and error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one round, short runs")
    mode.add_argument("--tiny", action="store_true", help="tiny runs, for the tests")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated: {','.join(ROWS)}")
    parser.add_argument("--servers", help="comma-separated name fragments, e.g. graceserve,granian")
    parser.add_argument("--rounds", type=int, help="rounds of the throughput rows")
    parser.add_argument("--idle-conns", type=int, help="idle row: connections (10000)")
    parser.add_argument("--out", default=str(RESULTS), help="directory for the JSON")
    parser.add_argument("--docs", action="store_true", help="rewrite docs/benchmarks.md's block")
    args = parser.parse_args(argv)
    args.row_list = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in args.row_list if r not in ROWS]
    if bad or not args.row_list:
        parser.error(f"--rows: unknown {','.join(bad) or '(none)'}; choose from {','.join(ROWS)}")
    args.peers = select_peers(args.servers)
    if not args.peers:
        parser.error(f"--servers: matches none of {', '.join(p.name for p in PEERS)}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: at least 1")
    return args


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    cfg = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    if args.rounds:
        cfg = replace(cfg, rounds=args.rounds)
    if args.idle_conns:
        cfg = replace(cfg, idle_conns=args.idle_conns)
    if not compare.have_wrk():
        print("bench/speed.py: wrk is not installed (bash bench/setup)", file=sys.stderr)
        return 1
    peers: list[Peer] = args.peers
    rows: list[str] = args.row_list
    needs_venv = any(p.family != "graceserve" for p in peers) or bool(
        {"flask", "django"} & set(rows)
    )
    py = ensure_venv() if needs_venv else sys.executable
    os.environ.pop("GRACESERVE_BIND", None)
    use_perf = bool({"term", "hup"} & set(rows)) and bu.perf_available()
    meta: dict[str, Any] = {
        "command": "python bench/speed.py" + "".join(f" {a}" for a in argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, load "
        + " ".join(Path("/proc/loadavg").read_text().split()[:3])
        + " at start",
        "versions": versions(py),
        "config": asdict(cfg),
        "perf": use_perf,
    }
    results: dict[str, Any] = {}
    for row in rows:
        bu.say(f"{row} ...")
        if row in TPUT_ROWS:
            results[row] = tput_row(row, peers, py, cfg)
        else:
            results[row] = rounds_row(row, peers, py, cfg, use_perf)
    text = report(results, peers, cfg, meta)
    print(text, end="")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"speed-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps({**meta, "rows": results}, indent=1, default=str) + "\n")
    bu.say(f"wrote {path}")
    if args.docs:
        write_docs(text)
        bu.say(f"rewrote the generated block of {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
