"""The readiness line: what the runner prints is what the parser reads back."""

from __future__ import annotations

import pytest

from graceserve.process.readiness import READY_PATTERN, Ready, listen_url, parse_ready, ready_line


@pytest.mark.parametrize(
    ("scheme", "where", "address"),
    [
        ("http", "127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("tcp", "127.0.0.1:0", ("127.0.0.1", 0)),
        ("http", "[::1]:9000", ("::1", 9000)),
        ("tcp", "localhost:65535", ("localhost", 65535)),
        ("http", "unix:/tmp/gs-x/app.sock", "/tmp/gs-x/app.sock"),
        ("tcp", "unix:/tmp/with space (and parens).sock", "/tmp/with space (and parens).sock"),
    ],
)
def test_the_line_the_runner_prints_parses_back(
    scheme: str, where: str, address: tuple[str, int] | str
) -> None:
    url = listen_url(scheme, where)
    line = ready_line(url, scheme, 4242, 1.5)
    ready = parse_ready(f"2026-12-02 03:00:00,000 graceserve[4242] INFO {line}")
    assert ready == Ready(
        url=url,
        protocol=scheme,
        host=address[0] if isinstance(address, tuple) else None,
        port=address[1] if isinstance(address, tuple) else None,
        path=address if isinstance(address, str) else None,
        pid=4242,
        grace=1.5,
    )
    assert ready.address == address


def test_the_format_is_the_documented_one() -> None:
    assert listen_url("http", "127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert listen_url("http", "unix:/run/a.sock") == "unix:/run/a.sock"
    line = ready_line("http://[::1]:8000", "http", 7, 8.0)
    assert line == "listening on http://[::1]:8000 (http, pid 7, grace 8s)"
    assert ready_line("unix:/a", "tcp", 1, 0.25) == "listening on unix:/a (tcp, pid 1, grace 0.25s)"


def test_grace_written_with_g_reads_back() -> None:
    for grace in (0.0, 0.001, 10.0, 1e6, 12345678.0):
        ready = parse_ready(ready_line("tcp://127.0.0.1:1", "tcp", 1, grace))
        assert ready is not None
        assert ready.grace == float(f"{grace:g}")


def test_a_stand_in_line_without_the_parenthesis() -> None:
    ready = parse_ready("listening on http://127.0.0.1:4321")
    assert ready == Ready(url="http://127.0.0.1:4321", protocol="http", host="127.0.0.1", port=4321)


def test_the_first_readiness_line_of_a_buffer() -> None:
    text = (
        "graceserve[1] INFO starting\n"
        "graceserve[1] INFO listening on tcp://127.0.0.1:5 (tcp, pid 1, grace 2s)\n"
        "graceserve[2] INFO listening on tcp://127.0.0.1:6 (tcp, pid 2, grace 2s)\n"
    )
    ready = parse_ready(text)
    assert ready is not None
    assert (ready.port, ready.pid) == (5, 1)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "listening on",
        "not listening on anything",
        "listening on ftp://127.0.0.1:21 (tcp, pid 1, grace 1s)",
        "listening on http://127.0.0.1 (http, pid 1, grace 1s)",
        "listening on unix:/a.sock",  # a path needs the parenthesis to end it
        "listening on http://127.0.0.1:80x (http, pid 1, grace 1s)",
    ],
)
def test_other_lines_are_not_readiness_lines(text: str) -> None:
    assert parse_ready(text) is None


def test_the_pattern_has_the_groups_older_tests_use() -> None:
    match = READY_PATTERN.search("listening on http://127.0.0.1:8 (http, pid 3, grace 1s)")
    assert match is not None
    assert (match["scheme"], match["host"], match["port"]) == ("http", "127.0.0.1", "8")
