"""The cost of TLS: hello throughput over https against http, side by side.

Run from the repository root (needs wrk and the openssl command line):

    python bench/tls.py                # 3 rounds of 5 s per scheme and target
    python bench/tls.py --quick        # 1 round of 3 s
    python bench/tls.py --rounds 5 --seconds 8 --connections 50

What it measures: ``wrk -t2 -cN -dS --latency`` against two graceserve
processes started side by side, one plain and one with ``--certfile`` (an EC
P-256 certificate the benchmark makes with openssl in a temporary directory),
for the demo handler (``GET /``) and a WSGI hello app.  wrk keeps its
connections alive, so this is the steady per-request cost of TLS (record
encryption, the extra copies and GIL hand-offs of ``SSLSocket``), not the
handshake; ``--new-connections`` adds a run where every request opens a new
connection (``Connection: close``), which is where the handshake dominates.
Rounds alternate the order of the servers.  Reported: median req/s and
p50/p99 latency, server CPU per request, and https / http as a ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import benchutil as bu

PY = sys.executable
WSGI_HELLO = "peers:wsgi_app"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=bench",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def wrk(url: str, seconds: int, connections: int, close: bool) -> bu.WrkResult:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60)
    return bu.parse_wrk(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--new-connections", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3
    print(bu.header("graceserve: https vs http (cost of TLS)", sys.argv))
    rows = []
    with bu.tempfile_dir() as tmp:
        cert, key = make_certificate(Path(tmp))
        tls = ["--certfile", str(cert), "--keyfile", str(key)]
        modes = [False, True] if args.new_connections else [False]
        for target in (None, WSGI_HELLO):
            name = "demo handler" if target is None else "WSGI hello"
            servers = {}
            try:
                for scheme, extra in (("http", []), ("https", tls)):
                    cmd = [PY, "-m", "graceserve", *([target] if target else []),
                           "--bind", f"{bu.HOST}:0", *extra]  # fmt: skip
                    servers[scheme] = bu.Server(f"{name} {scheme}", cmd).start(ready_line=True)
                for close in modes:
                    results: dict[str, list[bu.WrkResult]] = {"http": [], "https": []}
                    cpu: dict[str, list[float]] = {"http": [], "https": []}
                    for round_ in range(args.rounds):
                        order = ["http", "https"] if round_ % 2 == 0 else ["https", "http"]
                        for scheme in order:
                            server = servers[scheme]
                            before = server.cpu_seconds()
                            url = f"{scheme}://{bu.HOST}:{server.port}/"
                            result = wrk(url, args.seconds, args.connections, close)
                            results[scheme].append(result)
                            cpu[scheme].append(
                                (server.cpu_seconds() - before) / max(result.requests, 1) * 1e6
                            )
                            errors = result.read + result.write + result.timeout + result.connect
                            label = f"{name} {scheme}{' close' if close else ''}"
                            bu.say(f"  {label}: {result.rps:.0f} req/s, errors {errors}")
                    rps = {s: bu.median([r.rps for r in results[s]]) for s in results}
                    for scheme in ("http", "https"):
                        rows.append([
                            name + (" (new conn.)" if close else ""), scheme, f"{rps[scheme]:.0f}",
                            f"{bu.median([r.latency.get('50%', 0) for r in results[scheme]]):.2f}",
                            f"{bu.median([r.latency.get('99%', 0) for r in results[scheme]]):.2f}",
                            f"{bu.median(cpu[scheme]):.0f}",
                            f"{rps[scheme] / rps['http']:.2f}x",
                        ])  # fmt: skip
            finally:
                for server in servers.values():
                    server.stop()
                    server.close()
    print(bu.table(
        ["target", "scheme", "req/s", "p50 ms", "p99 ms", "CPU us/req", "vs http"], rows,
        title=f"wrk -t2 -c{args.connections} -d{args.seconds}s, median of {args.rounds} rounds",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
