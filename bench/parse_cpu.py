"""CPU per request head: the stdlib's ``http.client.parse_headers`` vs ``graceserve.http.parse``.

Run from the repository root (stdlib only, nothing to install):

    python bench/parse_cpu.py            # full run (~15 s)
    python bench/parse_cpu.py --quick    # short run (~3 s)

Why: ``parse_headers`` (through ``email.parser``) is the main per-request CPU
cost of ``BaseHTTPRequestHandler``; graceserve's own reader must cost less
while checking more.  Both read the same browser-like head (11 header fields)
from an ``io.BufferedReader`` (what a socket's ``makefile("rb")`` is) over a
raw stream that hands out one head per read, as a socket does for a
keep-alive client waiting for each response.  The CPU time of this thread
(``time.thread_time``: a shared machine's descheduling does not count) is
divided by the number of heads; rounds interleaved (order rotated); medians
reported with their ratio to the stdlib, side by side in one run.

Compared:

- stdlib: ``http.client.parse_headers(fp)`` (what ``parse_request`` calls)
- graceserve fields: ``read_fields`` + ``framing`` (what a WSGI server needs)
- graceserve message: the same + ``to_message`` (what a handler's
  ``self.headers`` needs)
- graceserve head: ``parse_request_line`` + the above (the whole head; the
  stdlib's own request-line parsing is not counted on its side)
- graceserve line by line: the message case with ``readline`` wrapped in a
  function, so ``read_fields`` cannot ``peek`` and reads a line per call, as
  it does when a head arrives in pieces
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graceserve.http.framing import framing  # noqa: E402
from graceserve.http.parse import (  # noqa: E402
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


class OneHeadPerRead(io.RawIOBase):
    """A raw stream that hands out one head per read, as a socket does for a
    keep-alive client that waits for each response."""

    def __init__(self, head: bytes, count: int) -> None:
        self.head, self.left = head, count

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.left:
            return 0
        self.left -= 1
        buffer[: len(self.head)] = self.head
        return len(self.head)


def connection(head: bytes, count: int) -> io.BufferedReader:
    """What a socket's ``makefile("rb")`` is: a BufferedReader (8 KiB buffer)."""
    return io.BufferedReader(OneHeadPerRead(head, count))


def stdlib(calls: int) -> float:
    rfile = connection(FIELDS, calls)
    t0 = time.thread_time()
    for _ in range(calls):
        http.client.parse_headers(rfile)
    return time.thread_time() - t0


def gs_fields(calls: int) -> float:
    readline = connection(FIELDS, calls).readline
    t0 = time.thread_time()
    for _ in range(calls):
        framing(LINE, read_fields(readline))
    return time.thread_time() - t0


def gs_message(calls: int) -> float:
    readline = connection(FIELDS, calls).readline
    t0 = time.thread_time()
    for _ in range(calls):
        fields = read_fields(readline)
        framing(LINE, fields)
        to_message(fields)
    return time.thread_time() - t0


def gs_head(calls: int) -> float:
    readline = connection(REQUEST_LINE + FIELDS, calls).readline
    t0 = time.thread_time()
    for _ in range(calls):
        line = parse_request_line(readline(8192))
        fields = read_fields(readline)
        framing(line, fields)
        to_message(fields)
    return time.thread_time() - t0


def gs_lines(calls: int) -> float:
    rfile = connection(FIELDS, calls)

    def readline(size: int) -> bytes:  # not a BufferedReader's own: line by line
        return rfile.readline(size)

    t0 = time.thread_time()
    for _ in range(calls):
        fields = read_fields(readline)
        framing(LINE, fields)
        to_message(fields)
    return time.thread_time() - t0


CASES: dict[str, Callable[[int], float]] = {
    "stdlib parse_headers": stdlib,
    "graceserve read_fields+framing": gs_fields,
    "graceserve +to_message": gs_message,
    "graceserve +parse_request_line": gs_head,
    "graceserve +to_message, line by line": gs_lines,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (~3 s)")
    args = parser.parse_args()
    rounds, calls = (5, 2000) if args.quick else (15, 5000)
    # Same result on both sides before timing anything.
    parsed = http.client.parse_headers(connection(FIELDS, 1))
    assert parsed.items() == to_message(read_fields(connection(FIELDS, 1).readline)).items()
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    names = list(CASES)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(CASES[name](calls) / calls * 1e6)
    print(f"Python {sys.version.split()[0]}, {rounds} rounds x {calls} heads, medians")
    base = statistics.median(samples[names[0]])
    print(f"{'case':38} {'us/head':>8} {'vs stdlib':>10}")
    for name in names:
        us = statistics.median(samples[name])
        print(f"{name:38} {us:8.2f} {base / us:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
