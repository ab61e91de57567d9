"""The access log and the JSON log lines: what a log collector reads back.

What is proved: one access line per response, the same for a handler target
and a WSGI app, in the combined format (plus the duration) and as JSON; ``-``
writes to stderr; a full disk drops lines without stopping anything and is
logged once; a rotated file is reopened without a signal; ``--log-format
json`` makes every graceserve line one JSON object with stable events, the
readiness line still parseable, and tracebacks inside the object.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from graceserve.http.accesslog import AccessLog, AccessRecord, format_combined, format_json
from graceserve.logformat import JSONFormatter
from graceserve.process.readiness import parse_ready
from testsupport.accesslog import COMBINED
from testsupport.process import ServerProcess
from testsupport.tlsapp import APP
from testsupport.waiting import wait_until

StartServer = Callable[..., ServerProcess]


def get(address: tuple[str, int], path: str, headers: dict[str, str] | None = None) -> bytes:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        with conn.getresponse() as response:
            assert response.status == 200
            return response.read()
    finally:
        conn.close()


def lines_of(path: Path, count: int) -> list[str]:
    """The first ``count`` lines of ``path``, waiting for them (written after each response)."""
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= count)
    return path.read_text().splitlines()[:count]


HEADERS = {"User-Agent": 'probe/1.0 "quoted"', "Referer": "http://example.test/from"}


@pytest.mark.parametrize("target", ["handler", "wsgi"])
@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_one_access_line_per_response(
    start_server: StartServer, tmp_path: Path, target: str, fmt: str
) -> None:
    (tmp_path / "app.py").write_text(APP)
    log_path = tmp_path / "access.log"
    args = ["--bind", "127.0.0.1:0", "--access-log", str(log_path), "--access-log-format", fmt]
    server = start_server((["app:app"] if target == "wsgi" else []) + args, cwd=tmp_path)
    address = server.wait_ready()
    body = get(address, "/healthz?x=1&y=2", HEADERS)
    get(address, "/")
    # Each line is written after its response, by its connection's thread: in any order.
    first, second = sorted(lines_of(log_path, 2), key=lambda line: "healthz" not in line)
    if fmt == "combined":
        match = COMBINED.match(first)
        assert match is not None, first
        assert match["client"] == "127.0.0.1"
        assert match["request"] == "GET /healthz?x=1&y=2 HTTP/1.1"
        assert (match["status"], match["bytes"]) == ("200", str(len(body)))
        assert match["referer"] == "http://example.test/from"
        assert match["agent"] == r"probe/1.0 \x22quoted\x22"
        assert 0 <= float(match["duration"]) < 10
        assert COMBINED.match(second) is not None
    else:
        entry = json.loads(first)
        assert set(entry) == {
            "time", "client", "method", "path", "query", "protocol", "status", "bytes",
            "duration", "user_agent", "referer",
        }  # fmt: skip
        assert (entry["client"], entry["method"], entry["path"], entry["query"]) == (
            "127.0.0.1", "GET", "/healthz", "x=1&y=2",
        )  # fmt: skip
        assert (entry["protocol"], entry["status"], entry["bytes"]) == ("HTTP/1.1", 200, len(body))
        assert entry["user_agent"] == HEADERS["User-Agent"]
        assert entry["referer"] == HEADERS["Referer"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
        assert json.loads(second)["path"] == "/"
    assert "GET /healthz" not in server.output  # the access log, not stderr


def test_access_log_dash_is_stderr(start_server: StartServer) -> None:
    server = start_server(["--bind", "127.0.0.1:0", "--access-log", "-"])
    address = server.wait_ready()
    get(address, "/")
    server.wait_for_line(r'^127\.0\.0\.1 - - \[.*\] "GET / HTTP/1\.1" 200 22 "-" "-" \d+\.\d{6}$')


def test_an_access_log_that_cannot_be_opened_is_exit_code_3(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(
        ["--bind", "127.0.0.1:0", "--access-log", str(tmp_path / "no" / "such" / "dir.log")]
    )
    assert server.wait_exit() == 3
    assert len(server.output.strip().splitlines()) == 1, server.output
    assert "cannot start: --access-log" in server.output


def record(path: str = "/") -> AccessRecord:
    return AccessRecord(1.5e9, "192.0.2.1", "GET", path, "", "HTTP/1.1", 200, 5, 0.25, "", "")


def test_a_full_disk_drops_lines_and_is_logged_once(graceserve_log: list[str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    writer = AccessLog("/dev/full")
    try:
        for _ in range(3):
            writer.write(record())  # never raises
    finally:
        writer.close()
    warnings = [line for line in graceserve_log if "access log /dev/full: cannot write" in line]
    assert len(warnings) == 1, graceserve_log


def test_a_rotated_file_is_reopened_without_a_signal(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = AccessLog(str(path))
    try:
        writer.write(record("/before"))
        path.rename(tmp_path / "access.log.1")  # what logrotate does
        writer._next_check = math.inf  # the check is not due (whatever the clock did)
        writer.write(record("/racing"))  # before the next check: still the old file
        writer._next_check = 0.0  # the once-a-second check is due
        writer.write(record("/after"))
    finally:
        writer.close()
    old = (tmp_path / "access.log.1").read_text()
    assert "/before" in old
    assert "/racing" in old
    assert "/after" in path.read_text()
    assert "/after" not in old


def test_the_combined_line_format() -> None:
    line = format_combined(record("/p"))
    assert (
        line
        == '192.0.2.1 - - [14/Jul/2017:02:40:00 +0000] "GET /p HTTP/1.1" 200 5 "-" "-" 0.250000\n'
    )


# -- graceserve's own lines as JSON ---------------------------------------------------


HOSTILE = '1.2.3.4 - - [x] "GET / HTTP/1.1" 200 1 "-" "-" 0.1\r\n\x85\u2028"\\'


def test_no_field_of_a_combined_line_can_start_a_line_or_fake_a_field() -> None:
    # Every field a client can reach (a forwarded client that slipped through, the target,
    # the version, the agent, the referer) holds quotes, spaces, CR, LF, NEL, U+2028.
    hostile = AccessRecord(
        1.5e9, HOSTILE, "GET", "/" + HOSTILE, HOSTILE, "HTTP/1.1", 200, 5, 0.25, HOSTILE, HOSTILE
    )
    line = format_combined(hostile)
    assert line.endswith("\n")
    assert len(line.splitlines()) == 1  # str.splitlines breaks at NEL and U+2028 too
    match = COMBINED.match(line[:-1])
    assert match is not None, line
    assert match["client"] == r"1.2.3.4\x20-\x20-\x20[x]\x20\x22GET\x20/\x20HTTP/1.1\x22\x20200" + (
        r"\x201\x20\x22-\x22\x20\x22-\x22\x200.1\x0d\x0a\x85\u2028\x22\x5c"
    )
    assert match["status"] == "200"
    assert match["agent"] == match["referer"]
    assert "\\x0d\\x0a" in match["request"]


def test_no_field_of_a_json_line_can_start_a_line() -> None:
    hostile = AccessRecord(
        1.5e9, HOSTILE, HOSTILE, HOSTILE, HOSTILE, HOSTILE, 200, 5, 0.25, HOSTILE, HOSTILE
    )
    line = format_json(hostile)
    assert line.isascii()
    assert len(line.splitlines()) == 1
    assert set(json.loads(line).values()) >= {HOSTILE}


def test_log_format_json_end_to_end(start_server: StartServer) -> None:
    server = start_server(["--bind", "127.0.0.1:0", "--log-format", "json"])
    address = server.wait_ready()  # the readiness line is found inside the JSON object
    assert server.ready is not None
    assert server.ready.protocol == "http"
    get(address, "/")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    entries = [json.loads(line) for line in server.output.splitlines() if line.strip()]
    events = {entry["event"]: entry for entry in entries}
    assert {"ready", "drain_start", "stopped"} <= set(events), entries
    for entry in entries:
        assert {"time", "level", "pid", "event", "message"} <= set(entry)
        assert entry["pid"] == server.proc.pid
    ready = parse_ready(events["ready"]["message"])
    assert ready is not None
    assert ready.port == address[1]
    assert events["ready"]["url"] == f"http://127.0.0.1:{address[1]}"
    assert events["drain_start"]["signal"] == "SIGTERM"
    stopped = events["stopped"]
    assert (stopped["exit_code"], stopped["forced"], stopped["clean"]) == (0, 0, True)
    assert stopped["level"] == "info"


def test_json_lines_keep_tracebacks_inside() -> None:
    formatter = JSONFormatter()
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        entry = logging.LogRecord(
            "graceserve", logging.ERROR, __file__, 1, "failed: %s", ("x",), sys.exc_info()
        )
    entry.event = "internal_error"
    text = formatter.format(entry)
    assert "\n" not in text
    parsed = json.loads(text)
    assert (parsed["event"], parsed["message"], parsed["level"]) == (
        "internal_error",
        "failed: x",
        "error",
    )
    assert "ValueError: boom" in parsed["traceback"]
    assert parsed["traceback"].startswith("Traceback")


def test_parse_ready_reads_a_json_line_with_an_escaped_path() -> None:
    message = 'listening on unix:/tmp/a"b.sock (http, pid 7, grace 8s)'
    line = json.dumps({"event": "ready", "message": message})
    ready = parse_ready("noise\n" + line + "\n")
    assert ready is not None
    assert (ready.path, ready.pid) == ('/tmp/a"b.sock', 7)


def test_a_client_that_asks_for_close_is_told_close(start_server: StartServer) -> None:
    # Not the access log as such: what wrk's Connection: close runs of bench/tls.py need.
    server = start_server(["--bind", "127.0.0.1:0"])
    address = server.wait_ready()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200")
    assert head.count(b"\r\nconnection: close") == 1


PLAIN_HANDLER = """\
import http.server


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
"""


def test_with_json_logs_a_plain_handler_s_own_lines_are_json_too(
    start_server: StartServer, tmp_path: Path
) -> None:
    (tmp_path / "handler.py").write_text(PLAIN_HANDLER)
    server = start_server(["handler:Handler", "--bind", "127.0.0.1:0", "--log-format", "json"],
                          cwd=tmp_path)  # fmt: skip
    address = server.wait_ready()
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/x")
        with conn.getresponse() as response:
            assert response.read() == b"ok"
    finally:
        conn.close()
    server.wait_for_line(r'"event": "handler"')
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    entries = [json.loads(line) for line in server.output.splitlines() if line.strip()]
    handler_lines = [entry for entry in entries if entry["event"] == "handler"]
    assert len(handler_lines) == 1
    assert '"GET /x HTTP/1.1" 200' in handler_lines[0]["message"]


def test_a_closed_pipe_drops_lines_and_is_logged_once(graceserve_log: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away: every write fails with EPIPE
    writer = AccessLog("-")
    writer.fd = write_end  # stderr's place, without touching the real stderr
    try:
        for _ in range(3):
            writer.write(record())  # never raises
    finally:
        os.close(write_end)
    assert sum("access log -: cannot write" in line for line in graceserve_log) == 1


@pytest.mark.parametrize("target", ["handler", "wsgi"])
def test_a_malformed_request_is_logged_too(
    start_server: StartServer, tmp_path: Path, target: str
) -> None:
    (tmp_path / "app.py").write_text(APP)
    log_path = tmp_path / "access.log"
    args = ["--bind", "127.0.0.1:0", "--access-log", str(log_path), "--access-log-format", "json"]
    server = start_server((["app:app"] if target == "wsgi" else []) + args, cwd=tmp_path)
    address = server.wait_ready()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        while sock.recv(4096):
            pass
    (line,) = lines_of(log_path, 1)
    entry = json.loads(line)
    assert (entry["client"], entry["status"]) == ("127.0.0.1", 400)
