"""Real Flask and Django applications through GracefulWSGIServer, with a real HTTP client.

The same routes in both (tests/wsgi_flask_app.py, tests/wsgi_django_app.py),
each app wrapped in ``wsgiref.validate.validator`` (with ``read()`` without a
size allowed under it, see ``testsupport.wsgiapps.sized_reads``), spoken to with
``http.client`` over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator

import pytest

from testsupport.wsgiapps import Address, serving, sized_reads

pytest.importorskip("flask")
pytest.importorskip("django")


@pytest.fixture(params=["flask", "django"])
def address(request: pytest.FixtureRequest) -> Iterator[Address]:
    if request.param == "flask":
        from wsgi_flask_app import app
    else:
        from wsgi_django_app import application as app
    with serving(sized_reads(app)) as server:  # validator(sized_reads(app))
        yield server.server_address


def call(
    address: Address, method: str, path: str, body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    conn = http.client.HTTPConnection(address[0], address[1], timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def test_routing_and_query_string(address: Address) -> None:
    status, _, body = call(address, "GET", "/hello/w%C3%B6rld?q=a+b%21")
    assert (status, body.decode()) == (200, "hello w\u00f6rld a b!")


def test_form_post(address: Address) -> None:
    form = b"a=1&b=two+words"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = call(address, "POST", "/form", form, headers)
    assert (status, body) == (200, b"POST 1 two words")


def test_json(address: Address) -> None:
    payload = json.dumps({"x": [1, 2, "\u00e9"]}).encode()
    status, headers, body = call(
        address, "POST", "/json", payload, {"Content-Type": "application/json"}
    )
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"got": {"x": [1, 2, "\u00e9"]}}


def test_one_megabyte_multipart_upload(address: Address) -> None:
    data = os.urandom(1024 * 1024)
    boundary = "graceserveBoundary7MA4YWxkTrZu0gW"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="blob.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _, reply = call(address, "POST", "/upload", body, headers)
    assert status == 200
    assert json.loads(reply) == {"name": "blob.bin", "size": len(data), "sum": sum(data) % 65521}


def test_streaming_generator_response(address: Address) -> None:
    status, headers, body = call(address, "GET", "/stream")
    assert status == 200
    assert headers.get("transfer-encoding") == "chunked"
    assert body == b"".join(f"part {i}\n".encode() for i in range(5))


def test_cookies(address: Address) -> None:
    status, headers, body = call(address, "GET", "/cookies")
    assert (status, body) == (200, b"seen=")
    assert headers["set-cookie"].startswith("seen=yes")
    status, _, body = call(address, "GET", "/cookies", headers={"Cookie": "seen=yes; other=1"})
    assert body == b"seen=yes"


def test_404(address: Address) -> None:
    status, _, _ = call(address, "GET", "/no/such/route")
    assert status == 404


def test_app_exception_is_a_500_and_the_server_lives_on(address: Address) -> None:
    status, _, _ = call(address, "GET", "/boom")
    assert status == 500
    assert call(address, "GET", "/hello/again")[0] == 200


def test_keep_alive_connection_serves_many_requests(address: Address) -> None:
    conn = http.client.HTTPConnection(address[0], address[1], timeout=10)
    try:
        for i in range(20):
            conn.request("GET", f"/hello/n{i}")
            response = conn.getresponse()
            assert response.read() == f"hello n{i} ".encode()
        assert conn.sock is not None  # the same connection throughout
    finally:
        conn.close()
