"""The front door through both servers: what a hostile client's bytes can and cannot do.

Issue 18's findings, end to end on 127.0.0.1: each head is sent by hand to a
handler target (``GracefulHTTPServer`` with a plain ``BaseHTTPRequestHandler``)
and to a WSGI app (``GracefulWSGIServer``), both of which record what they
were given, so a test sees both the status on the wire and whether anything
reached the application.  The parser's rules themselves are pinned without
sockets in ``test_httpparse.py``; the cost of the worst inputs in
``test_parse_linear.py``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from graceserve import GracefulHTTPServer
from testsupport.accesslog import COMBINED
from testsupport.wsgiapps import Address, Client, Reply, serving, sized_reads

KINDS = ["handler", "wsgi"]
TIMEOUT = 10.0  # seconds any client socket here may block


@dataclass
class Front:
    """A server of one kind, and what its application was given (one dict per request)."""

    kind: str
    address: Address
    seen: list[dict[str, Any]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [str(request["path"]) for request in self.seen]


def _answer(info: dict[str, Any]) -> bytes:
    return json.dumps(info).encode()


def _echo_app(front: Front) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        info: dict[str, Any] = {"path": environ["PATH_INFO"], "query": environ["QUERY_STRING"]}
        front.seen.append(info)
        info["body"] = environ["wsgi.input"].read().decode("latin-1")
        info["host"] = environ.get("HTTP_HOST")
        info["content_type"] = environ.get("CONTENT_TYPE")
        info["client"] = environ["REMOTE_ADDR"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [_answer(info)]

    return sized_reads(app)


def _echo_handler(front: Front) -> type[http.server.BaseHTTPRequestHandler]:
    class Echo(http.server.BaseHTTPRequestHandler):
        """Answers with what it was given; de-chunks a chunked body itself, leniently,
        as hand-written handlers do (the server passes it through as sent)."""

        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            info: dict[str, Any] = {"path": self.path}
            front.seen.append(info)
            if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                info["body"] = self._dechunk().decode("latin-1")
            else:
                info["body"] = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                info["body"] = info["body"].decode("latin-1")
            info["host"] = self.headers.get("Host")
            info["content_type"] = self.headers.get("Content-Type")
            info["client"] = self.forwarded_client  # type: ignore[attr-defined]
            body = _answer(info)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.do_GET()

        def _dechunk(self) -> bytes:
            parts = []
            for _ in range(1000):
                size = int(self.rfile.readline(100).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(10)
            for _ in range(100):  # the trailer, up to a line that is blank (CRLF or LF)
                if not self.rfile.readline(1000).strip():
                    break
            return b"".join(parts)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Echo


@contextlib.contextmanager
def front(kind: str, **settings: Any) -> Iterator[Front]:
    """A server of ``kind`` on 127.0.0.1:0 with ``settings`` as class attributes."""
    if kind == "wsgi":
        found = Front(kind, ("", 0))
        with serving(_echo_app(found), **settings) as wsgi_server:
            found.address = wsgi_server.server_address
            yield found
        return
    server_class = type("TestHTTPServer", (GracefulHTTPServer,), settings)
    found = Front(kind, ("", 0))
    server = server_class(("127.0.0.1", 0), _echo_handler(found))
    found.address = server.server_address
    thread = threading.Thread(target=server.serve_forever, name="test-http-serve", daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.drain(5.0)
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


def exchange(address: Address, data: bytes) -> tuple[list[Reply], bool]:
    """Send ``data`` on one connection; the responses up to one that says ``close`` (or
    EOF), and whether EOF followed.  ``data`` must end in a request that closes."""
    replies = []
    with Client(address, TIMEOUT) as client:
        client.send(data)
        for _ in range(10):
            try:
                replies.append(client.read_response())
            except EOFError:
                return replies, True
            if (replies[-1].header("Connection") or "").lower() == "close":
                return replies, client.at_eof()
    return replies, False


def one(address: Address, data: bytes) -> Reply:
    """The response to the request ``data``; an error must end the connection."""
    with Client(address, TIMEOUT) as client:
        client.send(data)
        reply = client.read_response()
        if reply.status >= 400:
            assert client.at_eof(), "an error response must close the connection"
        return reply


def seen_of(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply
    result: dict[str, Any] = json.loads(reply.body)
    return result


HEAD = b"Host: example.com\r\n"


# -- 1. a quadratic field regex --------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_whitespace_then_a_bare_cr_in_field_lines_is_refused_at_once(kind: str) -> None:
    # Each line holds a run of tabs and then a bare CR: the shape that made the field
    # regex backtrack once per tab (these lines froze every connection for ~30 s).
    lines, tabs = 99, 8100  # within the limits both kinds share
    bad = b"GET / HTTP/1.1\r\n" + HEAD + (b"X:" + b"\t" * tabs + b"\ra\r\n") * lines + b"\r\n"
    with front(kind) as server, Client(server.address, TIMEOUT) as attacker:
        attacker.send(bad)
        # Another client is served meanwhile, and the attacker gets its 400 (the socket
        # timeout bounds both: the old regex needed far longer).
        assert one(server.address, b"GET /other HTTP/1.1\r\n" + HEAD + b"\r\n").status == 200
        reply = attacker.read_response()
        assert reply.status == 400
        assert b"bare CR" in reply.body
        assert server.paths() == ["/other"]


# -- 2. a chunked body ended by a bare LF ----------------------------------------------


@pytest.mark.parametrize("ending", [b"0\r\n\n", b"0\r\nX: y\n\r\n", b"0\r\nX: y\r\n\n"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_chunked_body_ended_by_a_bare_lf_smuggles_no_request(kind: str, ending: bytes) -> None:
    chunked = b"POST /upload HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    smuggled = b"GET /smuggled HTTP/1.1\r\n" + HEAD + b"\r\n"
    with front(kind) as server:
        replies, eof = exchange(server.address, chunked + b"1\r\na\r\n" + ending + smuggled)
        # WSGI: the body is de-chunked by graceserve, strictly: 400.  Handler: the
        # handler de-chunks it (leniently, here) and the server closes the connection
        # after a chunked request, so what follows the body is never read as a request.
        assert [reply.status for reply in replies] == [400 if kind == "wsgi" else 200]
        assert eof
        assert "/smuggled" not in server.paths()


# -- 3. the absolute-form target's authority -------------------------------------------


@pytest.mark.parametrize(
    "target",
    [b"http://good.com@evil.com/reset", b'http://evil.com"><script>/x', b"gopher://example.com/"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_an_absolute_form_target_is_held_to_the_rules_of_host(kind: str, target: bytes) -> None:
    with front(kind) as server:
        reply = one(server.address, b"GET " + target + b" HTTP/1.1\r\n" + HEAD + b"\r\n")
        assert reply.status == 400
        assert server.seen == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_valid_absolute_form_target_names_the_host(kind: str) -> None:
    with front(kind) as server:
        target = b"http://real.example:81/p?q=1"
        seen = seen_of(one(server.address, b"GET " + target + b" HTTP/1.1\r\n" + HEAD + b"\r\n"))
    if kind == "wsgi":  # RFC 9112 3.2.2: the target's authority replaces Host
        assert (seen["path"], seen["query"], seen["host"]) == ("/p", "q=1", "real.example:81")
    else:  # the stdlib's handler gets the target as sent
        assert seen["path"] == "http://real.example:81/p?q=1"


# -- 4. forwarded client addresses and the access log ----------------------------------

# What ``ipaddress`` takes for an IPv6 address with a zone: a forged access-log entry.
FORGED = 'fe80::1%x - - [01-Jan-2030 00-00-00 +0000] "POST \\login HTTP-1.1" 200 1 "-" "-" 0.1'


@pytest.mark.parametrize("xff", [FORGED, "fe80::1%eth0", "203.0.113.9:\u00b2"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_forwarded_zone_id_is_neither_the_client_nor_a_log_line(
    kind: str, xff: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    with front(kind, access_log=str(log_path)) as server:
        request = b"GET /x HTTP/1.1\r\n" + HEAD + b"X-Forwarded-For: " + xff.encode("latin-1")
        reply = one(server.address, request + b"\r\n\r\n")
        assert seen_of(reply)["client"] == "127.0.0.1"  # the peer: the value is not believed
    lines = log_path.read_text().splitlines()
    assert len(lines) == 1
    match = COMBINED.match(lines[0])
    assert match is not None, lines[0]
    assert match["client"] == "127.0.0.1"


# -- 5. single fields sent twice -------------------------------------------------------


@pytest.mark.parametrize("name", [b"Content-Type", b"Authorization"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_second_content_type_or_authorization_400(kind: str, name: bytes) -> None:
    fields = name + b": text/plain\r\n" + name + b": application/json\r\n"
    request = b"POST / HTTP/1.1\r\n" + HEAD + fields + b"Content-Length: 0\r\n\r\n"
    with front(kind) as server:
        reply = one(server.address, request)
        assert reply.status == 400
        assert server.seen == []


# -- 6. fields a trailer must not carry ------------------------------------------------


@pytest.mark.parametrize(
    "name", [b"Content-Length", b"Host", b"Transfer-Encoding", b"Content-Type"]
)
def test_a_trailer_field_that_belongs_in_the_head_400(name: bytes) -> None:
    # WSGI only: a handler target de-chunks the body itself (its trailer is its own).
    head = b"POST /upload HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    with front("wsgi") as server:
        reply = one(server.address, head + b"1\r\na\r\n0\r\n" + name + b": 5\r\n\r\n")
        assert reply.status == 400
        assert name in reply.body


# -- 7. the target: fragment, raw bytes; the field-size limit --------------------------


@pytest.mark.parametrize("target", [b"/x#top", b"/x?a=1#top"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_fragment_in_the_target_400(kind: str, target: bytes) -> None:
    with front(kind) as server:
        reply = one(server.address, b"GET " + target + b" HTTP/1.1\r\n" + HEAD + b"\r\n")
        assert reply.status == 400
        assert server.seen == []


@pytest.mark.parametrize("kind", KINDS)
def test_raw_bytes_in_the_target_are_decoded_once(kind: str) -> None:
    with front(kind) as server:
        reply = one(server.address, b"GET /\xc3\xa0%20x?q=\xc3\xa0 HTTP/1.1\r\n" + HEAD + b"\r\n")
        seen = seen_of(reply)
    if kind == "wsgi":  # PEP 3333: the bytes, percent-decoded, as latin-1, once
        assert (seen["path"], seen["query"]) == ("/\u00c3\u00a0 x", "q=\u00c3\u00a0")
    else:  # BaseHTTPRequestHandler.path: the target as sent, as latin-1 (as the stdlib's)
        assert seen["path"] == "/\u00c3\u00a0%20x?q=\u00c3\u00a0"


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_field_size_limit_counts_a_line_without_its_line_ending(
    kind: str, ending: bytes
) -> None:
    with front(kind, limit_request_field_size=100) as server:
        for size, expected in ((99, 200), (100, 200), (101, 431), (102, 431)):
            line = b"X-Long: " + b"v" * (size - len(b"X-Long: "))
            assert len(line) == size
            request = b"GET / HTTP/1.1\r\n" + HEAD + line + ending + b"X: y\r\n\r\n"
            assert one(server.address, request).status == expected, size
        assert len(server.seen) == 2


# -- 10. an empty line before the request ----------------------------------------------


@pytest.mark.parametrize("empty", [b"\r\n", b"\n"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_empty_line_before_a_request_is_ignored(kind: str, empty: bytes) -> None:
    # RFC 9112 2.2 (a client may send a CRLF after a POST body); one, not a stream of them.
    with front(kind) as server:
        request = b"GET /after HTTP/1.1\r\n" + HEAD + b"\r\n"
        assert seen_of(one(server.address, empty + request))["path"] == "/after"
        assert one(server.address, empty * 2 + request).status == 400
        # And between two requests on one connection.
        last = b"GET /last HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n"
        replies, eof = exchange(server.address, request + empty + last)
        assert [reply.status for reply in replies] == [200, 200]
        assert eof


# -- 8. HEAD of a streaming response (WSGI) --------------------------------------------


def test_head_of_a_response_of_unknown_length_has_no_content_length() -> None:
    # Flask, Bottle and Pyramid answer HEAD with an empty body where GET streams one:
    # "Content-Length: 0" would be a length GET does not have (RFC 9110 8.6).
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["REQUEST_METHOD"] == "HEAD":
            return ()
        return iter([b"streamed ", b"body"])

    with serving(app) as server, Client(server.server_address, TIMEOUT) as client:
        client.request("GET", "/")
        get = client.read_response()
        assert (get.header("Transfer-Encoding"), get.body) == ("chunked", b"streamed body")
        client.request("HEAD", "/")
        head = client.read_response(head_request=True)
        assert head.status == 200
        assert head.header("Content-Length") is None
        assert head.header("Transfer-Encoding") is None
        client.request("GET", "/")  # the connection is still in step
        assert client.read_response().body == b"streamed body"


def test_head_of_a_list_response_has_get_s_content_length() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    with serving(app, validate=False) as server, Client(server.server_address, TIMEOUT) as client:
        client.request("HEAD", "/")
        assert client.read_response(head_request=True).header("Content-Length") == "5"


# -- 9. a refused body inside the app (WSGI) -------------------------------------------

LONG_JSON = b'{"a": "' + b"x" * 20 + b'"}'
CHUNKED_JSON = (
    b"POST /json HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"%x\r\n%s\r\n0\r\n\r\n" % (len(LONG_JSON), LONG_JSON), 413),
        (b"zz\r\n{}\r\n0\r\n\r\n", 400),
        (b"2\r\n{}\r\n0\r\nContent-Length: 2\r\n\r\n", 400),
    ],
    ids=["over --max-body-size", "bad chunk size", "forbidden trailer"],
)
def test_a_body_refused_inside_flask_is_answered_with_its_status(body: bytes, status: int) -> None:
    # Flask turns any exception from reading the body into its own 500 (and logs it):
    # the client gets the body's status instead, and the connection ends.
    pytest.importorskip("flask")
    from wsgi_flask_app import app

    with serving(sized_reads(app), max_body_size=16) as server:
        replies, eof = exchange(server.server_address, CHUNKED_JSON + body)
        assert [reply.status for reply in replies] == [status]
        assert eof


def test_a_body_refused_after_the_head_went_out_ends_the_connection(
    graceserve_log: list[str],
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"started "
        try:
            environ["wsgi.input"].read()
        except Exception:
            yield b"and went on"  # the app swallowed it: its response cannot be trusted

    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    with (
        serving(app, validate=False, max_body_size=4) as server,
        Client(server.server_address, TIMEOUT) as client,
    ):
        client.send(head + b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n")
        reply = client.read_head()
        assert reply.status == 200
        rest = client.file.read()  # then EOF: no last chunk, the client sees the cut
        assert not rest.endswith(b"0\r\n\r\n")
    refused = [m for m in graceserve_log if "request body refused after the response began" in m]
    assert len(refused) == 1
    assert "413" in refused[0]
