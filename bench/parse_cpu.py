"""CPU per request head: the stdlib's ``http.client.parse_headers`` vs ``graceserve.httpparse``.

Run from the repository root (stdlib only, nothing to install):

    python bench/parse_cpu.py            # full run (~15 s)
    python bench/parse_cpu.py --quick    # short run (~3 s)

Why: ``parse_headers`` (through ``email.parser``) is the main per-request CPU
cost of ``BaseHTTPRequestHandler``; graceserve's own reader must cost less
while checking more.  Both read the same browser-like head (11 header fields)
from an ``io.BytesIO`` (created inside the timed call, for both), rounds
interleaved (order rotated), medians of microseconds per head reported with
their ratio to the stdlib, side by side in one run.

Compared:

- stdlib: ``http.client.parse_headers(fp)`` (what ``parse_request`` calls)
- graceserve fields: ``read_fields`` + ``framing`` (what a WSGI server needs)
- graceserve message: the same + ``to_message`` (what a handler's
  ``self.headers`` needs)
- graceserve head: ``parse_request_line`` + the above (the whole head; the
  stdlib's own request-line parsing is not counted on its side)
"""

from __future__ import annotations

import argparse
import http.client
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graceserve.httpparse import (  # noqa: E402
    framing,
    parse_request_line,
    read_fields,
    to_message,
)

REQUEST_LINE = b"GET /articles/2024/graceful-shutdown?page=2&sort=new HTTP/1.1\r\n"
FIELDS = (
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.com/articles/2024/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=7f3a9c2e41b84d0f; theme=dark; consent=1\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"\r\n"
)
LINE = parse_request_line(REQUEST_LINE)


def stdlib() -> object:
    return http.client.parse_headers(io.BytesIO(FIELDS))


def gs_fields() -> object:
    fields = read_fields(io.BytesIO(FIELDS).readline)
    return framing(LINE, fields)


def gs_message() -> object:
    fields = read_fields(io.BytesIO(FIELDS).readline)
    framing(LINE, fields)
    return to_message(fields)


def gs_head() -> object:
    readline = io.BytesIO(REQUEST_LINE + FIELDS).readline
    line = parse_request_line(readline(8192))
    fields = read_fields(readline)
    framing(line, fields)
    return to_message(fields)


CASES: dict[str, Callable[[], object]] = {
    "stdlib parse_headers": stdlib,
    "graceserve read_fields+framing": gs_fields,
    "graceserve +to_message": gs_message,
    "graceserve +parse_request_line": gs_head,
}


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    """Microseconds per call of ``fn``, timed over ``calls`` calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (~3 s)")
    args = parser.parse_args()
    rounds, calls = (5, 2000) if args.quick else (15, 5000)
    # Same result on both sides before timing anything.
    assert list(stdlib().items()) == list(gs_message().items())  # type: ignore[attr-defined]
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    names = list(CASES)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(per_call_us(CASES[name], calls))
    print(f"Python {sys.version.split()[0]}, {rounds} rounds x {calls} heads, medians")
    base = statistics.median(samples[names[0]])
    print(f"{'case':34} {'us/head':>8} {'vs stdlib':>10}")
    for name in names:
        us = statistics.median(samples[name])
        print(f"{name:34} {us:8.2f} {base / us:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
