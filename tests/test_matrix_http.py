"""HTTP in every mode: keep-alive, pipelining, strict parsing, head limits, idle timeout, caps.

Rows of the contract matrix (README: "What the server guarantees", the WSGI
limits table, ``--idle-timeout``, ``--max-connections``, PEP 3333's
``wsgi.multiprocess``), for a handler and a WSGI app in every mode.  The
handler path and the WSGI path must behave the same where HTTP is concerned:
a row asserts one decided behaviour on both, and the kind that differs today
is ``xfail(strict)`` with the finding.  Decisions where the two disagree:

- an empty line before a request is skipped (RFC 9112 2.2: a server SHOULD);
- the documented WSGI limits hold for both: request line 8,190 bytes (414),
  100 header fields (431), a field line 8,190 bytes (431), ``--max-body-size`` (413);
- an error's status line carries the standard reason phrase (RFC 9110), the
  detail goes in the body;
- a body cut short by the idle timeout is never handed to the app as if it
  were complete: the connection closes without a 2xx.

Rows that only ask questions share one server per combination (``shared``);
the idle-timeout and connection-cap experiments have their own, run at once
with the others (``testsupport.contract``).
"""

from __future__ import annotations

import uuid

import pytest

from testsupport import contract
from testsupport.contract import Held, IdleProbes
from testsupport.matrix import (
    Lab,
    rows,
)
from testsupport.rawhttp import EOF, Reply, request_bytes
from testsupport.serve import Served

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(300)]

PHASES = [
    {
        "shared": contract.shared_server,
        "idle": contract.idle_timeout,
        "max connections": contract.max_connections,
    }
]
MAX_BODY = 1024  # the shared server's --max-body-size
END = 5.0  # seconds a client waits for the server to close after a response

SMUGGLING = {
    "Content-Length with Transfer-Encoding": b"POST /seen/{id} HTTP/1.1\r\nHost: t\r\n"
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two Content-Lengths": b"POST /seen/{id} HTTP/1.1\r\nHost: t\r\n"
    b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "obs-fold": b"GET /seen/{id} HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n",
    "bare CR": b"GET /seen/{id} HTTP/1.1\r\nHost: t\r\nX-A: 1\r2\r\n\r\n",
    "whitespace before a colon": b"GET /seen/{id} HTTP/1.1\r\nHost : t\r\n\r\n",
    "a signed Content-Length": b"POST /seen/{id} HTTP/1.1\r\nHost: t\r\n"
    b"Content-Length: +3\r\n\r\nabc",
}


def shared(lab: Lab) -> Served:
    served = lab.outcome("shared")
    assert isinstance(served, Served)
    return served


def send(served: Served, data: bytes) -> tuple[Reply, str]:
    """``data`` on a new connection: the response, and how the connection ended after it
    (ask for ``Connection: close``, or this waits ``END`` seconds for the end)."""
    with served.connect() as conn:
        conn.send(data)
        answered = conn.read_reply()
        return answered, conn.ending(END)


def refused_with(served: Served, data: bytes, status: int) -> None:
    """``data`` gets ``status`` with a real status line, ``Connection: close``, then a FIN."""
    answered, ended = send(served, data)
    assert answered.version in ("HTTP/1.0", "HTTP/1.1"), answered
    assert (answered.status, answered.says_close, ended) == (status, True, EOF), answered


# -- keep-alive and pipelining ----------------------------------------------------------------


@rows()
def test_one_keepalive_connection_serves_requests_one_after_another(lab: Lab) -> None:
    with shared(lab).connect() as conn:
        for number in range(3):
            conn.request("GET", f"/n{number}")
            answered = conn.read_reply()
            assert answered.status == 200, answered
            assert answered.json()["path"] == f"/n{number}"
            assert not answered.says_close, answered.headers


@rows()
def test_pipelined_requests_are_answered_in_order(lab: Lab) -> None:
    with shared(lab).connect() as conn:
        conn.send(b"".join(request_bytes("GET", f"/p{number}") for number in range(3)))
        paths = [conn.read_reply().json()["path"] for _ in range(3)]
    assert paths == ["/p0", "/p1", "/p2"]


# -- strict parsing ----------------------------------------------------------------------------


@rows()
def test_a_smuggling_shape_gets_a_400_status_line_and_never_reaches_the_app(lab: Lab) -> None:
    served = shared(lab)
    ids = {shape: uuid.uuid4().hex for shape in SMUGGLING}
    for shape, template in SMUGGLING.items():
        answered, ended = send(served, template.replace(b"{id}", ids[shape].encode()))
        assert (answered.status, answered.says_close, ended) == (400, True, EOF), (shape, answered)
    marker = uuid.uuid4().hex
    assert served.get(f"/seen/{marker}").status == 200
    served.wait_line(f"app-saw /seen/{marker}")  # the app's stderr is in order
    reached = [shape for shape, id_ in ids.items() if f"app-saw /seen/{id_}" in served.log]
    assert reached == [], reached


@rows()
def test_an_empty_line_before_a_request_is_skipped(lab: Lab) -> None:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request-line."""
    answered, _ = send(shared(lab), b"\r\n" + request_bytes("GET", "/", close=True))
    assert answered.status == 200, answered


# -- head limits: one decided behaviour for both kinds ---------------------------------------


@rows()
def test_a_request_line_over_8190_bytes_gets_414(lab: Lab) -> None:
    refused_with(shared(lab), request_bytes("GET", "/" + "a" * 8200, close=True), 414)


@rows()
def test_more_than_100_header_fields_get_431(lab: Lab) -> None:
    fields = {f"X-Field-{number}": "v" for number in range(101)}
    refused_with(shared(lab), request_bytes("GET", "/", fields, close=True), 431)


@rows()
def test_a_header_field_line_over_8190_bytes_gets_431(lab: Lab) -> None:
    refused_with(shared(lab), request_bytes("GET", "/", {"X-Big": "v" * 8200}, close=True), 431)


@rows()
def test_a_body_over_max_body_size_gets_413(lab: Lab) -> None:
    body = b"x" * (MAX_BODY + 1)
    refused_with(shared(lab), request_bytes("POST", "/echo", body=body, close=True), 413)


@rows()
def test_a_body_within_max_body_size_is_read_by_the_app(lab: Lab) -> None:
    body = b"x" * MAX_BODY
    answered, _ = send(shared(lab), request_bytes("POST", "/echo", body=body, close=True))
    assert (answered.status, answered.body) == (200, b"x" * MAX_BODY)


@rows()
def test_an_error_status_line_has_the_standard_reason_phrase(lab: Lab) -> None:
    fields = {f"X-Field-{number}": "v" for number in range(101)}
    answered, _ = send(shared(lab), request_bytes("GET", "/", fields, close=True))
    assert (answered.status, answered.reason) == (431, "Request Header Fields Too Large")


# -- what the app is told -------------------------------------------------------------------------


@rows(
    only=lambda combo: combo.wsgi,
    why_not="wsgi.multiprocess: a WSGI row",
)
def test_wsgi_multiprocess_is_true_exactly_when_workers_serve(lab: Lab) -> None:
    """PEP 3333: true if another process may invoke the same app at the same time
    (``--workers 2``); a single process, also once a HUP made it a supervisor of one
    worker, says False."""
    env = shared(lab).get("/env").json()
    assert env["multiprocess"] is (lab.combo.workers > 1), env
    assert env["multithread"] is True, env


@rows()
def test_a_trusted_proxy_s_forwarded_client_and_scheme_reach_the_app(lab: Lab) -> None:
    """From 127.0.0.1 (trusted by default): ``REMOTE_ADDR``/``wsgi.url_scheme`` for a WSGI
    app, ``forwarded_client``/``forwarded_proto`` for a handler."""
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    env = shared(lab).get("/env", headers).json()
    assert (env["client"], env["scheme"]) == ("203.0.113.7", "https"), env


@rows()
def test_graceserve_stopping_is_false_while_serving(lab: Lab) -> None:
    assert shared(lab).get("/env").json()["stopping"] is False


# -- --idle-timeout ------------------------------------------------------------------------------


def idle(lab: Lab) -> IdleProbes:
    outcome = lab.outcome("idle")
    assert isinstance(outcome, IdleProbes)
    return outcome


@rows()
def test_idle_timeout_closes_an_idle_keepalive_connection(lab: Lab) -> None:
    probe = idle(lab).idle
    assert probe.ended == EOF, probe
    assert probe.seconds > contract.IDLE_TIMEOUT / 2, probe  # not at once: after the timeout


@rows()
def test_idle_timeout_closes_a_stalled_request_head(lab: Lab) -> None:
    probe = idle(lab).head
    closed = probe.ended == EOF or (isinstance(probe.ended, Reply) and probe.ended.status == 408)
    assert closed, probe


@rows()
def test_idle_timeout_closes_a_stalled_body_without_answering_it(lab: Lab) -> None:
    """The app never answers a body it did not get whole (a 408, or just the close)."""
    probe = idle(lab).body
    closed = probe.ended == EOF or (isinstance(probe.ended, Reply) and probe.ended.status == 408)
    assert closed, probe


# -- --max-connections ---------------------------------------------------------------------------


def held(lab: Lab) -> Held:
    outcome = lab.outcome("max connections")
    assert isinstance(outcome, Held)
    return outcome


@rows()
def test_a_client_beyond_max_connections_waits_in_the_backlog_then_is_served(lab: Lab) -> None:
    """Every serving process holds ``--max-connections 1`` requests; one more client is
    neither refused nor reset: it waits in the kernel's accept queue, and is served once
    a held request ends."""
    outcome = held(lab)
    assert outcome.queued >= 1
    assert isinstance(outcome.waiting, Reply), outcome.waiting
    assert outcome.waiting.status == 200
    assert [getattr(reply, "status", reply) for reply in outcome.held] == [200] * lab.combo.workers
