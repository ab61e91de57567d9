"""The contract matrix's harness (testsupport: rawhttp.Connection, serve, load, matrix),
checked against canned servers and a real graceserve, so that a matrix row fails because of
graceserve, never because its client misread the bytes."""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
import time
import types
from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import pytest

from testsupport.load import Load, classify
from testsupport.matrix import COMBOS, Finding, phases_of, rows
from testsupport.rawhttp import EOF, OPEN, RESET, Connection, request_bytes
from testsupport.serve import MODES, Gate, NotServingError, serve
from testsupport.waiting import wait_until

TIMEOUT = 5.0


@contextlib.contextmanager
def canned(reply: bytes, then: str = "fin") -> Iterator[tuple[str, int]]:
    """A one-connection server: reads the request, sends ``reply``, then ``fin`` (close),
    ``rst`` (reset) or ``hold`` (keep the connection open until the block ends)."""
    done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                conn.recv(65536)
                conn.sendall(reply)
                if then == "rst":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif then == "hold":
                    done.wait(TIMEOUT)

        thread = threading.Thread(target=run, name="test-canned")
        thread.start()
        try:
            yield listener.getsockname()
        finally:
            done.set()
            thread.join(TIMEOUT)


# -- rawhttp.Connection ---------------------------------------------------------------------


def test_request_bytes_frames_a_body_and_asks_for_close() -> None:
    assert request_bytes("POST", "/e", {"X-A": "1"}, b"abc", close=True) == (
        b"POST /e HTTP/1.1\r\nHost: test\r\nX-A: 1\r\nContent-Length: 3\r\n"
        b"Connection: close\r\n\r\nabc"
    )
    chunked = request_bytes("POST", "/", {"Transfer-Encoding": "chunked"}, b"0\r\n\r\n")
    assert b"Content-Length" not in chunked


def test_a_reply_is_read_exactly_and_pipelined_ones_in_order() -> None:
    two = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nab"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nxyz\r\n1\r\n!\r\n0\r\nTrailer: t\r\n\r\n"
    )
    with canned(two) as address, Connection(address, timeout=TIMEOUT) as conn:
        conn.request("GET", "/")
        first = conn.read_reply()
        second = conn.read_reply()
        assert conn.ending() == EOF
    assert (first.status, first.reason, first.body, first.says_close) == (200, "OK", b"ab", False)
    assert (second.status, second.chunked, second.body) == (201, True, b"xyz!")


def test_a_close_delimited_body_and_bodiless_statuses() -> None:
    close_delimited = b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    with canned(close_delimited) as address, Connection(address, timeout=TIMEOUT) as conn:
        conn.request()
        reply = conn.read_reply()
    assert (reply.version, reply.body, reply.says_close) == ("HTTP/1.0", b"until the end", True)
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    with canned(no_content, then="hold") as address, Connection(address, timeout=TIMEOUT) as conn:
        conn.request()
        assert conn.read_reply().body == b""  # returns without waiting for the close


@pytest.mark.slow
def test_the_end_of_a_connection_is_told_apart() -> None:
    for then, expected in (("fin", EOF), ("rst", RESET), ("hold", OPEN)):
        with canned(b"", then) as address, Connection(address, timeout=TIMEOUT) as conn:
            conn.request()
            assert conn.ending(0.5) == expected, then


def test_a_response_cut_short_is_an_eof_error_never_a_short_reply() -> None:
    for reply in (
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab",
    ):
        with canned(reply) as address, Connection(address, timeout=TIMEOUT) as conn:
            conn.request()
            with pytest.raises(EOFError):
                conn.read_reply()


def test_bytes_where_the_end_was_expected_are_an_error() -> None:
    with canned(b"surprise") as address, Connection(address, timeout=TIMEOUT) as conn:
        conn.request()
        with pytest.raises(AssertionError, match="surprise"):
            conn.ending()


# -- load, matrix ------------------------------------------------------------------------------


def test_failures_are_classified() -> None:
    assert classify(ConnectionResetError()) == "reset"
    assert classify(BrokenPipeError()) == "reset"
    assert classify(http.client.RemoteDisconnected("x")) == "eof"
    assert classify(TimeoutError()) == "timeout"
    assert classify(OSError("other")) == "other"


def one_answer_then_eof(delay: float, tail: float | None) -> Load:
    """A Load client against a server that answers the first request after ``delay``
    seconds, then closes the connection at the second one without answering it (and
    stops listening): what did the client make of that EOF?"""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def run() -> None:
        with listener.accept()[0] as conn:
            conn.settimeout(TIMEOUT)
            conn.recv(65536)
            time.sleep(delay)  # the server is slow: the client's next request comes later
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npid 42")
            conn.recv(65536)
            listener.close()  # first: the client's reconnect after the EOF is refused

    thread = threading.Thread(target=run, name="test-one-answer")
    thread.start()
    load = Load(listener.getsockname(), 1, tail=tail)
    load.stopping.set()  # the reconnect after the EOF is refused: the client ends
    thread.join(TIMEOUT)
    wait_until(lambda: load.refused == 1, TIMEOUT, "the client to be refused after the EOF")
    load.stop()
    assert (load.total(), load.pids) == (1, {42})
    return load


@pytest.mark.slow
def test_an_eof_after_a_late_request_is_the_tail_only_when_asked_for() -> None:
    late = one_answer_then_eof(delay=0.3, tail=0.2)
    assert (late.failures, len(late.tail_eofs)) == ([], 1), late.failures
    strict = one_answer_then_eof(delay=0.3, tail=None)
    assert (len(strict.failures), strict.tail_eofs) == (1, []), strict.tail_eofs
    assert strict.failure_kinds() == {"eof": 1}
    prompt = one_answer_then_eof(delay=0.0, tail=0.2)
    assert (len(prompt.failures), prompt.tail_eofs) == (1, []), prompt.tail_eofs


def test_rows_mark_exactly_the_combinations_a_finding_applies_to() -> None:
    finding = Finding("wsgi breaks", lambda combo: combo.wsgi)
    mark = rows(finding, only=lambda combo: combo.workers == 1, why_not="one process")
    params = {param.id: param.marks for param in mark.args[1]}
    assert list(params) == [str(combo) for combo in COMBOS]
    assert [m.name for m in params["handler-one"]] == []
    assert [m.name for m in params["wsgi-one"]] == ["xfail"]
    assert params["wsgi-one"][0].kwargs == {"strict": True, "reason": "issue 19: wsgi breaks"}
    assert [m.name for m in params["wsgi-workers2"]] == ["skip"]
    assert mark.kwargs == {"indirect": True, "scope": "session"}


def test_a_lab_runs_the_phases_of_the_selected_rows_modules_merged_phase_by_phase() -> None:
    def scenario(lab: object) -> None:
        return None

    first, second, plain = (types.ModuleType(name) for name in ("first", "second", "plain"))
    first.PHASES = [{"a": scenario}, {"load": scenario}]  # type: ignore[attr-defined]
    second.PHASES = [{"b": scenario}]  # type: ignore[attr-defined]
    plain.PHASES = [{"never": scenario}]  # type: ignore[attr-defined]  # rows without a lab
    items = [
        SimpleNamespace(module=first, fixturenames=["lab"]),
        SimpleNamespace(module=first, fixturenames=["lab", "tmp_path"]),
        SimpleNamespace(module=second, fixturenames=["request", "lab"]),
        SimpleNamespace(module=plain, fixturenames=["tmp_path"]),
    ]
    phases = phases_of(cast("list[pytest.Item]", items))
    assert [sorted(phase) for phase in phases] == [["a", "b"], ["load"]]


# -- serve --------------------------------------------------------------------------------------


def test_serve_tells_a_start_that_failed_from_a_hang() -> None:
    with pytest.raises(NotServingError) as failed:
        serve("handler", MODES[0], args=["--access-log", "/nonexistent/directory/access.log"])
    assert failed.value.code == 3
    assert "access.log" in failed.value.output


@pytest.mark.slow
def test_serve_reload_and_gate() -> None:
    """A single process after one HUP (``ctl graceful``): served by a new pid, a request
    held at the gate until released."""
    with serve("wsgi", MODES[1]) as served, Gate() as gate:
        assert served.status()["generation"] == 2
        assert served.get("/").json()["pid"] != served.pid  # a worker serves now
        with served.connect() as conn:
            conn.request("GET", gate.target)
            gate.wait_entered()
            gate.release()
            assert conn.read_reply().json()["stopping"] is False
