"""GracefulWSGIServer against PEP 3333: environ, start_response, framing, bodies, errors.

Every app runs under ``wsgiref.validate.validator`` except where a test must
show what the server does with an app the validator would stop first (those
say so).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graceserve.wsgi.server import GracefulWSGIServer, make_server
from testsupport.wsgiapps import Address, Client, get, hello_app, serving

Environ = dict[str, Any]


def environ_app(environ: Environ, start_response: Any) -> list[bytes]:
    """Answers with the environ's str values (and a few facts about the others) as JSON."""
    shown: dict[str, Any] = {k: v for k, v in environ.items() if isinstance(v, str)}
    shown["wsgi.version"] = list(environ["wsgi.version"])
    shown["wsgi.input_terminated"] = environ["wsgi.input_terminated"]
    shown["wsgi.multithread"] = environ["wsgi.multithread"]
    shown["stopping"] = environ["graceserve.stopping"]()
    shown["body"] = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode()
    body = json.dumps(shown).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def environ_of(address: Address, request: bytes) -> Environ:
    with Client(address) as client:
        client.send(request)
        reply = client.read_response()
    assert reply.status == 200, reply
    result: Environ = json.loads(reply.body)
    return result


def test_environ_has_every_cgi_and_wsgi_key() -> None:
    with serving(environ_app) as server:
        port = server.server_address[1]
        env = environ_of(
            server.server_address,
            b"POST /caf%C3%A9/a%2Fb?x=1&y=%20 HTTP/1.1\r\nHost: example.org:8080\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 4\r\nX-Multi: a\r\nX-Multi: b\r\n"
            b"Cookie: a=1\r\nCookie: b=2\r\nX_Spoof: evil\r\nX-Spoof: good\r\n\r\nbody",
        )
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9/a/b"  # percent-decoded as latin-1
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["CONTENT_LENGTH"] == "4"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env
    assert env["SERVER_PORT"] == str(port)
    assert env["SERVER_NAME"]
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit()
    assert env["HTTP_HOST"] == "example.org:8080"
    assert env["HTTP_X_MULTI"] == "a,b"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_SPOOF"] == "good"  # X_Spoof would have aliased it: dropped
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.multithread"] is True
    assert env["stopping"] is False
    assert env["body"] == "body"


def test_root_path_is_script_name_and_is_stripped_from_the_path() -> None:
    with serving(environ_app, root_path="/app/") as server:
        env = environ_of(server.server_address, b"GET /app/x/y HTTP/1.1\r\nHost: h\r\n\r\n")
        other = environ_of(server.server_address, b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/x/y")
    assert (other["SCRIPT_NAME"], other["PATH_INFO"]) == ("/app", "/other")


def test_absolute_form_target_gives_its_path_and_its_authority_is_the_host() -> None:
    request = b"GET http://real:81/p/q?z=1 HTTP/1.1\r\nHost: other\r\n\r\n"
    query_only = b"GET http://real?z=1 HTTP/1.1\r\nHost: other\r\n\r\n"
    with serving(environ_app) as server:
        env = environ_of(server.server_address, request)
        env2 = environ_of(server.server_address, query_only)
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["HTTP_HOST"]) == ("/p/q", "z=1", "real:81")
    assert (env2["PATH_INFO"], env2["QUERY_STRING"], env2["HTTP_HOST"]) == ("/", "z=1", "real")


def test_graceserve_stopping_turns_true_when_a_stop_is_announced() -> None:
    with serving(environ_app) as server:
        assert (
            environ_of(server.server_address, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")["stopping"]
            is False
        )
        server.announce_stop()
        assert (
            environ_of(server.server_address, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")["stopping"]
            is True
        )


def test_make_server_has_wsgiref_shape_and_serves() -> None:
    server = make_server("127.0.0.1", 0, hello_app)
    assert isinstance(server, GracefulWSGIServer)
    assert server.get_app() is hello_app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        reply = get(server.server_address)
        assert (reply.status, reply.body) == (200, b"hello\n")
        assert reply.header("Server")
        assert reply.header("Date")
    finally:
        server.server_close()
        thread.join(10)


# -- response framing -------------------------------------------------------


def streaming_app(environ: Environ, start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"one,"
    yield b""
    yield b"two"


def test_generator_is_chunked_on_http11_and_keeps_the_connection() -> None:
    with serving(streaming_app) as server, Client(server.server_address) as client:
        for _ in range(2):
            client.request("GET", "/")
            reply = client.read_response()
            assert reply.header("Transfer-Encoding") == "chunked"
            assert reply.body == b"one,two"
            assert reply.header("Connection") is None


def test_generator_is_close_delimited_on_http10() -> None:
    with serving(streaming_app) as server, Client(server.server_address) as client:
        client.request("GET", "/", version="HTTP/1.0", headers={"Connection": "keep-alive"})
        reply = client.read_response()
        assert reply.header("Transfer-Encoding") is None
        assert reply.header("Content-Length") is None
        assert reply.header("Connection") == "close"
        assert reply.body == b"one,two"


def test_list_result_gets_a_content_length_and_http10_keep_alive() -> None:
    """Not validated: the validator hides the list (the fast path) behind an iterator."""

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ab", b"cd"]

    with serving(app, validate=False) as server, Client(server.server_address) as client:
        client.request("GET", "/", version="HTTP/1.0", headers={"Connection": "keep-alive"})
        reply = client.read_response()
        assert (reply.header("Content-Length"), reply.body) == ("4", b"abcd")
        assert reply.header("Connection") == "keep-alive"
        client.request("GET", "/", version="HTTP/1.0")
        assert client.read_response().body == b"abcd"
        assert client.at_eof()  # HTTP/1.0 without keep-alive: closed


def test_date_and_server_added_unless_the_app_sets_them() -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Server", "mine")])
        return [b"x"]

    with serving(app) as server:
        reply = get(server.server_address)
    assert reply.header("Server") == "mine"
    assert (reply.header("Date") or "").endswith(" GMT")


class Closing:
    """An iterable with close(), recording that close() ran."""

    def __init__(self, chunks: list[bytes], fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("boom in the iterable")
            yield chunk

    def close(self) -> None:
        self.closed.set()


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_204_and_304_carry_no_body(status: str) -> None:
    result = Closing([b""])

    def app(environ: Environ, start_response: Any) -> Closing:
        start_response(status, [])
        return result

    with serving(app) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        reply = client.read_response()
        assert reply.status == int(status[:3])
        assert reply.header("Transfer-Encoding") is None
        client.request("GET", "/")  # the connection is still in step
        assert client.read_response().status == int(status[:3])
    assert result.closed.is_set()


def test_head_has_no_body_but_the_get_length_and_close_is_called() -> None:
    result = Closing([b"abc", b"def"])

    def app(environ: Environ, start_response: Any) -> Closing:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return result

    with serving(app) as server, Client(server.server_address) as client:
        client.request("HEAD", "/")
        reply = client.read_response(head_request=True)
        assert reply.header("Content-Length") == "6"
        client.request("GET", "/")
        assert client.read_response().body == b"abcdef"
    assert result.closed.is_set()


def test_short_content_length_closes_the_connection_and_logs(graceserve_log: list[str]) -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"12345"]

    with serving(app) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        reply = client.read_head()
        assert client.file.read() == b"12345"  # then EOF: never a hung client
        assert reply.header("Content-Length") == "10"
    assert any("declared Content-Length 10 but sent 5" in m for m in graceserve_log)


def test_long_body_is_cut_at_content_length_and_the_connection_closed() -> None:
    def app(environ: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        yield b"ab"
        yield b"cdef"

    with serving(app) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        client.read_head()
        assert client.file.read() == b"abc"


def test_write_callable_sends_before_the_iterable() -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"first,")
        write(b"")
        return [b"then"]

    with serving(app) as server:
        reply = get(server.server_address)
    assert reply.body == b"first,then"
    assert reply.header("Transfer-Encoding") == "chunked"


def test_headers_wait_for_the_first_non_empty_chunk() -> None:
    """An app may still turn its response into an error until a byte of body is out."""

    def app(environ: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                           sys.exc_info())  # fmt: skip
        yield b"sorry"

    with serving(app) as server:
        reply = get(server.server_address)
    assert (reply.status, reply.body) == (503, b"sorry")


def test_exc_info_after_the_headers_reraises_and_the_connection_closes(
    graceserve_log: list[str],
) -> None:
    def app(environ: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"partial"
        try:
            raise ValueError("too late")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        yield b"never"

    with serving(app) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        reply = client.read_head()
        assert reply.status == 200
        assert client.file.read() == b"7\r\npartial\r\n"  # no last chunk: the client sees the cut
    assert sum("application error after the headers" in m for m in graceserve_log) == 1


def test_app_exception_gets_a_500_logged_once_and_close_is_called(
    graceserve_log: list[str],
) -> None:
    result = Closing([b"a", b"b"], fail_at=0)

    def app(environ: Environ, start_response: Any) -> Closing:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return result

    with serving(app) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        reply = client.read_response()
        assert reply.status == 500
        assert b"Internal Server Error" in reply.body
        client.request("GET", "/")  # the server lives on, and so does the connection
        assert client.read_response().status == 500
    assert result.closed.is_set()
    assert sum(m.startswith("application error while serving GET /") for m in graceserve_log) == 2


def test_app_raising_at_call_gets_a_500() -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        raise KeyError("no")

    with serving(app) as server:
        reply = get(server.server_address)
        assert reply.status == 500
        assert get(server.server_address).status == 500


@pytest.mark.parametrize(
    "headers",
    [
        [("Connection", "keep-alive")],
        [("Transfer-Encoding", "chunked")],
        [("X-Bad", "a\r\nInjected: yes")],
        [("Bad Name", "x")],
        [("Content-Length", "-1")],
    ],
)
def test_bad_headers_from_the_app_are_errors(headers: list[tuple[str, str]]) -> None:
    """Not validated: the validator would reject some of these before we see them."""

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", headers)
        return [b"x"]

    with serving(app, validate=False) as server:
        reply = get(server.server_address)
    assert reply.status == 500
    assert b"Injected" not in reply.raw_head


def test_interim_status_from_the_app_is_an_error() -> None:
    """A 1xx as the final response would leave the client waiting for the real one."""

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("103 Early Hints", [("Link", "</s.css>; rel=preload")])
        return [b""]

    with serving(app, validate=False) as server:
        assert get(server.server_address).status == 500


def test_status_with_a_newline_is_an_error() -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK\r\nX: y", [])
        return [b"x"]

    with serving(app, validate=False) as server:
        assert get(server.server_address).status == 500


def test_second_start_response_without_exc_info_is_an_error() -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        start_response("201 Created", [])
        return [b"x"]

    with serving(app, validate=False) as server:
        assert get(server.server_address).status == 500


def test_close_is_called_when_the_client_goes_away() -> None:
    gone = threading.Event()
    result_closed = threading.Event()
    started = threading.Event()

    class Endless:
        def __iter__(self) -> Iterator[bytes]:
            started.set()
            while True:
                yield b"x" * 65536
                if gone.is_set():
                    yield b"x" * 65536

        def close(self) -> None:
            result_closed.set()

    def app(environ: Environ, start_response: Any) -> Endless:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Endless()

    with serving(app) as server:
        client = Client(server.server_address)
        client.request("GET", "/")
        assert started.wait(10)
        client.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        client.close()  # RST
        gone.set()
        assert result_closed.wait(10)


def test_file_wrapper_uses_sendfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not validated: the validator wraps the iterable, which hides the file from the server."""
    data = bytes(range(256)) * 1000
    path = tmp_path / "blob"
    path.write_bytes(data)
    calls: list[int] = []
    real = socket.socket.sendfile

    def spy(self: socket.socket, file: Any, offset: int = 0, count: int | None = None) -> int:
        calls.append(count or 0)
        return real(self, file, offset, count)

    monkeypatch.setattr(socket.socket, "sendfile", spy)

    def app(environ: Environ, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        handle = path.open("rb")
        handle.seek(10)
        return environ["wsgi.file_wrapper"](handle, 4096)

    with serving(app, validate=False) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        reply = client.read_response()
        assert reply.body == data[10:]
        assert reply.header("Content-Length") == str(len(data) - 10)
        client.request("HEAD", "/")
        assert client.read_response(head_request=True).header("Content-Length") == str(
            len(data) - 10
        )
    assert calls == [len(data) - 10]


def test_file_wrapper_under_the_validator_falls_back_to_iteration(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789" * 1000)

    def app(environ: Environ, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](path.open("rb"), 1000)

    with serving(app) as server:
        assert get(server.server_address).body == b"0123456789" * 1000


# -- request bodies ---------------------------------------------------------


def body_app(environ: Environ, start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"]
    mode = environ["QUERY_STRING"]
    if mode == "lines":
        parts = [body.readline(), b"|".join(body.readlines())]
    elif mode == "iter":
        parts = list(body)
    elif mode == "pieces":
        parts = [body.read(3), b"/", body.read(1000), b"/", body.read(10)]
    elif mode == "none":
        parts = [b"unread"]
    else:
        parts = [*iter(lambda: body.read(7), b""), body.read(5)]  # past the end: b""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"".join(parts)]


def body_app_all(environ: Environ, start_response: Any) -> list[bytes]:
    """Reads wsgi.input to its end without a size (wsgi.input_terminated)."""
    data = b"".join(iter(lambda: environ["wsgi.input"].read(7), b""))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [data]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("lines", b"a\nb\n|c"),
        ("iter", b"a\nb\nc"),
        ("pieces", b"a\nb/\nc/"),
        ("all", b"a\nb\nc"),
    ],
)
def test_request_body_read_modes(mode: str, expected: bytes) -> None:
    with serving(body_app) as server, Client(server.server_address) as client:
        client.request("POST", "/?" + mode, body=b"a\nb\nc")
        assert client.read_response().body == expected
        client.request("GET", "/?all")  # the next request was not eaten by the body
        assert client.read_response().body == b""


def test_chunked_request_body_is_dechunked_without_content_length() -> None:
    with serving(body_app_all) as server, Client(server.server_address) as client:
        client.request("POST", "/", headers={"Transfer-Encoding": "chunked"})
        client.send(b"5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        assert client.read_response().body == b"hello, world"
    with serving(environ_app) as server:
        env = environ_of(
            server.server_address,
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        assert "CONTENT_LENGTH" not in env


def test_expect_100_continue_is_answered_at_the_first_read() -> None:
    with serving(body_app) as server, Client(server.server_address) as client:
        client.request("POST", "/?all", headers={"Expect": "100-continue", "Content-Length": "5"})
        interim = client.read_head()
        assert interim.status == 100
        client.send(b"abcde")
        reply = client.read_response()
        assert (reply.status, reply.body) == (200, b"abcde")


def test_expect_100_continue_unread_is_not_answered_and_the_connection_closes() -> None:
    with serving(body_app) as server, Client(server.server_address) as client:
        client.request("POST", "/?none", headers={"Expect": "100-continue", "Content-Length": "5"})
        reply = client.read_response()
        assert (reply.status, reply.body) == (200, b"unread")
        assert reply.header("Connection") == "close"
        assert client.at_eof()


def test_small_unread_body_is_discarded_and_the_connection_kept() -> None:
    with serving(body_app) as server, Client(server.server_address) as client:
        client.request("POST", "/?none", body=b"z" * 1000)
        assert client.read_response().body == b"unread"
        client.request("GET", "/?all")
        assert client.read_response().status == 200


def test_large_unread_body_closes_the_connection() -> None:
    with serving(body_app, discard_limit=1000) as server, Client(server.server_address) as client:
        client.request("POST", "/?none", headers={"Content-Length": "100000"})
        client.send(b"z" * 5000)
        reply = client.read_response()
        assert reply.body == b"unread"
        assert reply.header("Connection") == "close"  # said in advance, not a surprise EOF
        assert client.at_eof()


def test_body_over_max_body_size_is_413_without_calling_the_app() -> None:
    called = threading.Event()

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        called.set()
        return hello_app(environ, start_response)

    with serving(app, max_body_size=10) as server, Client(server.server_address) as client:
        client.request("POST", "/", body=b"x" * 11)
        assert client.read_response().status == 413
    assert not called.is_set()


# -- the request loop -------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_after_a_half_close() -> None:
    with serving(environ_app) as server, Client(server.server_address) as client:
        client.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5)))
        client.sock.shutdown(socket.SHUT_WR)
        paths = [json.loads(client.read_response().body)["PATH_INFO"] for _ in range(5)]
        assert paths == [f"/{i}" for i in range(5)]
        assert client.at_eof()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    ],
)
def test_malformed_requests_get_a_status_line_and_never_reach_the_app(
    request_bytes: bytes, status: int
) -> None:
    called = threading.Event()

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        called.set()
        return hello_app(environ, start_response)

    with serving(app) as server, Client(server.server_address) as client:
        client.send(request_bytes)
        reply = client.read_response()
        assert reply.status == status
        assert reply.header("Connection") == "close"
        assert client.at_eof()
    assert not called.is_set()


def test_request_line_over_the_limit_is_414() -> None:
    with serving(hello_app, limit_request_line=100) as server, Client(server.server_address) as c:
        c.send(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        assert c.read_response().status == 414


def test_head_cut_short_is_never_dispatched() -> None:
    called = threading.Event()

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        called.set()
        return hello_app(environ, start_response)

    with serving(app) as server, Client(server.server_address) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n")
        client.sock.shutdown(socket.SHUT_WR)
        assert client.at_eof()
    assert not called.is_set()


def test_header_value_outside_latin1_is_a_500_not_a_silent_close() -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Name", "\u20ac")])
        return [b"x"]

    with serving(app) as server:
        reply = get(server.server_address)
    assert reply.status == 500


class Text(str):
    """A str subclass: checked like a str, never remembered as one."""


def test_headers_seen_before_are_sent_the_same_and_a_changed_one_is_checked_again() -> None:
    """start_response remembers a status and header list it checked (graceserve.wsgi.response):
    a list seen again goes out as it did the first time, and one that differs in any way
    (a bad value, a value that is not latin-1, a str subclass) is checked again."""
    good = [("Content-Type", "text/plain"), ("X-A", "1")]
    lists = {
        "/good": good,
        "/bad": [("Content-Type", "text/plain"), ("X-A", "1\r\nInjected: yes")],
        "/euro": [("Content-Type", "text/plain"), ("X-A", "\u20ac")],
        "/subclass": [("Content-Type", "text/plain"), (Text("X-A"), Text("1"))],
        "/hop": [*good, ("Connection", "close")],
    }

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        status = "304 Not Modified" if environ["QUERY_STRING"] == "304" else "200 OK"
        start_response(status, list(lists[environ["PATH_INFO"]]))
        return [b"x"]

    order = ["/good", "/good", "/bad", "/euro", "/subclass", "/hop", "/good"] * 2
    with serving(app, validate=False) as server, Client(server.server_address) as client:
        heads = []
        for target in order:
            client.request("GET", target)
            reply = client.read_response()
            if target in ("/good", "/subclass"):
                assert reply.status == 200, target
                assert reply.body == b"x"
                heads.append(
                    b"\r\n".join(h for h in reply.raw_head.split(b"\r\n") if b"Date" not in h)
                )
            else:  # refused every time (a 500 of ours; the connection stays in step)
                assert reply.status == 500, target
                assert b"Injected" not in reply.raw_head
                assert b"X-A" not in reply.raw_head
        assert len(set(heads)) == 1, heads
        assert b"X-A: 1\r\n" in heads[0]
        client.request("GET", "/good?304")  # the same list under another status
        reply = client.read_response()
        assert reply.status == 304
        assert reply.header("Content-Length") is None
        client.request("HEAD", "/good")
        reply = client.read_response(head_request=True)
        assert (reply.status, reply.header("Content-Length")) == (200, "1")


def test_a_header_list_changed_after_start_response_is_sent_as_changed_and_checked() -> None:
    """What goes out is the list as it is when the head is sent, checked as start_response
    checks (an app that adds a header to its list late; not one the validator allows)."""
    late = {"/good": ("X-Late", "yes"), "/bad": ("X-Late", "a\r\nInjected: yes")}

    def app(environ: Environ, start_response: Any) -> Iterator[bytes]:
        headers = [("Content-Type", "text/plain")]
        start_response("200 OK", headers)
        headers.append(late[environ["PATH_INFO"]])
        yield b"x"

    with serving(app, validate=False) as server, Client(server.server_address) as client:
        for _ in range(2):
            client.request("GET", "/good")
            reply = client.read_response()
            assert (reply.status, reply.header("X-Late")) == (200, "yes")
            client.request("GET", "/bad")
            reply = client.read_response()
            assert reply.status == 500
            assert b"Injected" not in reply.raw_head


def test_chunked_body_over_max_body_size_is_413_when_the_app_reads_it() -> None:
    with serving(body_app_all, max_body_size=10) as server, Client(server.server_address) as c:
        c.request("POST", "/", headers={"Transfer-Encoding": "chunked"})
        c.send(b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
        reply = c.read_response()
        assert reply.status == 413
        assert reply.header("Connection") == "close"
        assert c.at_eof()


def test_an_http09_request_is_answered_at_once_with_a_status_line() -> None:
    """``GET /`` and nothing else (no blank line follows an HTTP/0.9 request line)."""
    called = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.set()
        return hello_app(environ, start_response)

    with serving(app) as server, Client(server.server_address) as client:
        client.send(b"GET /\r\n")  # the client now waits: it sends nothing more
        reply = client.read_response()
        assert (reply.status, reply.raw_head[:9]) == (505, b"HTTP/1.0 ")
        assert client.at_eof()
    assert not called.is_set()


def test_malformed_chunk_met_by_the_app_is_a_400_and_the_connection_closes() -> None:
    with serving(body_app_all) as server, Client(server.server_address) as client:
        client.request("POST", "/", headers={"Transfer-Encoding": "chunked"})
        client.send(b"+5\r\nhello\r\n0\r\n\r\n")
        assert client.read_response().status == 400
        assert client.at_eof()


GARBAGE = [
    b"\x00\x01\x02\xff\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: bare\rCR\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Many: y\r\n" * 200 + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"y" * 10000 + b"\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


@pytest.mark.parametrize("payload", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_gets_an_error_status_or_a_close_and_the_server_lives_on(payload: bytes) -> None:
    calls: list[str] = []

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        return body_app_all(environ, start_response)

    with serving(app) as server:
        with Client(server.server_address) as client:
            client.send(payload)
            try:
                reply = client.read_response()
            except EOFError:
                reply = None
            if reply is not None:
                assert 400 <= reply.status < 600, reply
                assert reply.header("Connection") == "close"
            assert client.at_eof()
        assert get(server.server_address).status == 200
    # Only the check request reached the app, and the chunked POST, whose head is
    # valid: its bad chunk is met while the app reads (a 400 then).
    assert calls == (["/", "/"] if payload.startswith(b"POST") else ["/"])
