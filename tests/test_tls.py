"""HTTPS end to end: real processes, certificates made by openssl, clients on 127.0.0.1.

What is proved: the stdlib client and curl verify and use the server's
certificate (handler targets and WSGI apps); client certificates are required
or refused; a plain request on the TLS port gets a clear-text 400 and a close;
a client that connects and never speaks stalls no one and is closed by the
idle timeout; bad TLS input is one line and exit code 3.  The drain and the
certificate rotation under load are in ``test_tls_drain``.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from graceserve import GracefulHTTPServer, HTTPOptions
from graceserve.http.tls import TLSSettingsError
from graceserve.process.listener import server_options
from testsupport.process import ServerProcess
from testsupport.procfs import ESTABLISHED, tcp_sockets
from testsupport.tlsapp import APP, Pki, https_get, load_json, make_pki
from testsupport.waiting import wait_until

StartServer = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_cert(pki: Pki) -> tuple[Path, Path]:
    return pki.issue("server", "graceserve-one")


def tls_args(cert: tuple[Path, Path], *more: str) -> list[str]:
    return ["--bind", "127.0.0.1:0", "--certfile", str(cert[0]), "--keyfile", str(cert[1]), *more]


def test_https_with_the_stdlib_client_and_curl(
    start_server: StartServer, pki: Pki, server_cert: tuple[Path, Path]
) -> None:
    server = start_server(tls_args(server_cert))
    address = server.wait_ready()
    assert server.ready is not None
    assert server.ready.url.startswith("https://")
    assert server.ready.protocol == "https"
    status, body, cn = https_get(address, "/", pki.client_context())
    assert (status, body, cn) == (200, b"hello from graceserve\n", "graceserve-one")
    # Keep-alive over TLS: two requests on one connection.
    conn = http.client.HTTPSConnection(*address, context=pki.client_context(), timeout=10)
    try:
        for _ in range(2):
            conn.request("GET", "/healthz")
            with conn.getresponse() as response:
                assert (response.status, response.read()) == (200, b"ok\n")
        assert conn.sock is not None
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        conn.close()
    if shutil.which("curl"):
        done = subprocess.run(
            ["curl", "-sS", "--cacert", str(pki.ca_cert), f"https://127.0.0.1:{address[1]}/"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (0, b"hello from graceserve\n"), done.stderr


def test_tls_1_2_is_served_and_1_1_refused(
    start_server: StartServer, server_cert: tuple[Path, Path]
) -> None:
    server = start_server(tls_args(server_cert))
    address = server.wait_ready()

    def client(version: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old versions
            context.minimum_version = context.maximum_version = version
        return context

    with (
        socket.create_connection(address, timeout=10) as raw,
        client(ssl.TLSVersion.TLSv1_2).wrap_socket(raw) as tls,
    ):
        assert tls.version() == "TLSv1.2"
    with (
        socket.create_connection(address, timeout=10) as raw,
        pytest.raises((ssl.SSLError, OSError)),
    ):
        client(ssl.TLSVersion.TLSv1_1).wrap_socket(raw).close()


def test_a_wsgi_app_sees_https(
    start_server: StartServer, pki: Pki, server_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(APP)
    server = start_server(["app:app", *tls_args(server_cert)], cwd=tmp_path)
    address = server.wait_ready()
    status, body, _cn = https_get(address, "/", pki.client_context())
    assert status == 200
    assert load_json(body) == {"remote_addr": "127.0.0.1", "scheme": "https",
                               "host": f"127.0.0.1:{address[1]}"}  # fmt: skip


@pytest.mark.slow
def test_client_certificates_required(start_server: StartServer, pki: Pki) -> None:
    cert = pki.issue("server-mtls", "graceserve-mtls")
    client = pki.issue("client", "a client", server=False)
    args = tls_args(cert, "--ca-certs", str(pki.ca_cert), "--cert-reqs", "required")
    server = start_server(args)
    address = server.wait_ready()
    status, body, _ = https_get(address, "/", pki.client_context(client))
    assert (status, body) == (200, b"hello from graceserve\n")
    # Without a certificate: refused (TLS 1.3 reports it at the first read).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(address, "/", pki.client_context())
    # With one from another CA: refused too.
    (pki.directory / "other").mkdir(exist_ok=True)
    other = make_pki(pki.directory / "other")
    stranger = other.issue("stranger", "a stranger", server=False)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(address, "/", pki.client_context(stranger))
    # The server still serves good clients, and said nothing loud about the bad ones.
    assert https_get(address, "/", pki.client_context(client))[0] == 200
    assert " ERROR " not in server.output
    assert "Traceback" not in server.output


@pytest.mark.slow
def test_a_plain_request_on_the_tls_port_gets_a_clear_400(
    start_server: StartServer, server_cert: tuple[Path, Path]
) -> None:
    server = start_server(tls_args(server_cert, "--log-level", "debug"))
    address = server.wait_ready()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):  # EOF ends it: no hang (the timeout would fail it)
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in received
    assert b"https://" in received
    server.wait_for_line(r"DEBUG 127\.0\.0\.1:\d+: plain HTTP on the TLS port")


@pytest.mark.slow
def test_a_silent_client_stalls_nobody_and_is_closed_by_the_idle_timeout(
    start_server: StartServer, pki: Pki, server_cert: tuple[Path, Path]
) -> None:
    server = start_server(tls_args(server_cert, "--idle-timeout", "1", "--log-level", "debug"))
    address = server.wait_ready()
    silent = socket.create_connection(address, timeout=10)
    try:
        # Another client, during the silent one's handshake: served at once, several times.
        for _ in range(3):
            assert https_get(address, "/", pki.client_context())[0] == 200
        # A request in flight (a slow one) is not held up either.
        result: list[int] = []
        slow = threading.Thread(
            target=lambda: result.append(
                https_get(address, "/slow?seconds=0.3", pki.client_context())[0]
            )
        )
        slow.start()
        slow.join(timeout=10)
        assert result == [200]
        started = time.monotonic()
        while silent.recv(64):  # a TLS alert may come first, then EOF: closed, not a hang
            pass
        assert time.monotonic() - started < 5.0
    finally:
        silent.close()
    server.wait_for_line(r"DEBUG 127\.0\.0\.1:\d+: TLS handshake failed")
    assert "Traceback" not in server.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["missing cert", "missing key", "not pem", "key mismatch", "missing ca", "encrypted key"],
)
def test_bad_tls_input_is_one_line_and_exit_code_3(
    start_server: StartServer, pki: Pki, server_cert: tuple[Path, Path], tmp_path: Path, case: str
) -> None:
    cert, key = str(server_cert[0]), str(server_cert[1])
    other_key = str(pki.ca_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    if case == "encrypted key":  # must not prompt for a passphrase: one line, exit 3
        subprocess.run(
            ["openssl", "pkey", "-in", key, "-aes-128-cbc", "-passout", "pass:secret",
             "-out", str(encrypted)], check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    args = {
        "missing cert": ["--certfile", str(tmp_path / "nope.pem"), "--keyfile", key],
        "missing key": ["--certfile", cert, "--keyfile", str(tmp_path / "nope.key")],
        "not pem": ["--certfile", str(garbage), "--keyfile", key],
        "key mismatch": ["--certfile", cert, "--keyfile", other_key],
        "missing ca": ["--certfile", cert, "--keyfile", key, "--ca-certs", str(garbage),
                       "--cert-reqs", "required"],
        "encrypted key": ["--certfile", cert, "--keyfile", str(encrypted)],
    }[case]  # fmt: skip
    server = start_server(["--bind", "127.0.0.1:0", *args])
    assert server.wait_exit() == 3
    lines = [line for line in server.output.splitlines() if line.strip()]
    assert len(lines) == 1, server.output
    assert "ERROR cannot start: --" in lines[0]


@pytest.mark.slow
def test_tls_options_that_need_each_other_are_usage_errors(
    start_server: StartServer, server_cert: tuple[Path, Path]
) -> None:
    for args in (
        ["--keyfile", str(server_cert[1])],
        ["--certfile", str(server_cert[0]), "--cert-reqs", "required"],
        ["--certfile", str(server_cert[0]), "--cert-reqs", "sometimes"],
    ):
        server = start_server(["--bind", "127.0.0.1:0", *args])
        assert server.wait_exit() == 2, args
        assert len(server.output.strip().splitlines()) == 1, server.output


def test_tls_and_production_settings_from_the_environment(tmp_path: Path) -> None:
    from graceserve.config import parse_args

    environ = {
        "GRACESERVE_CERTFILE": "/etc/tls/cert.pem",
        "GRACESERVE_KEYFILE": "/etc/tls/key.pem",
        "GRACESERVE_ACCESS_LOG": "-",
        "GRACESERVE_ACCESS_LOG_FORMAT": "JSON",
        "GRACESERVE_LOG_FORMAT": "json",
        "GRACESERVE_FORWARDED_ALLOW_IPS": " 10.0.0.0/8 , ::1 ",
    }
    settings = parse_args(["--keyfile", "/flag/wins.pem"], environ)
    assert (settings.certfile, settings.keyfile) == ("/etc/tls/cert.pem", "/flag/wins.pem")
    assert (settings.access_log, settings.access_log_format) == ("-", "json")
    assert settings.log_format == "json"
    assert settings.forwarded_allow_ips == "10.0.0.0/8,::1"
    options = server_options(settings, GracefulHTTPServer)
    assert isinstance(options, HTTPOptions)
    assert (options.certfile, options.access_log) == ("/etc/tls/cert.pem", "-")


GATED_APP = """\
import os
import time
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/gated":  # answers once the test creates the file "open"
            give_up = time.monotonic() + 60
            while not os.path.exists("open") and time.monotonic() < give_up:
                time.sleep(0.01)
            body = b"released\\n"
        else:
            body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass
"""


@pytest.mark.slow
def test_sigterm_lets_an_https_request_in_flight_finish_and_closes_idle_ones(
    start_server: StartServer, pki: Pki, server_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    (tmp_path / "gated.py").write_text(GATED_APP)
    server = start_server(tls_args(server_cert, "gated:Handler"), cwd=tmp_path)
    address = server.wait_ready()
    # An idle keep-alive connection: one request answered, then nothing.
    idle = pki.client_context().wrap_socket(
        socket.create_connection(address, timeout=10), server_hostname="127.0.0.1"
    )
    result: dict[str, object] = {}

    def in_flight() -> None:
        conn = http.client.HTTPSConnection(*address, context=pki.client_context(), timeout=30)
        try:
            conn.request("GET", "/gated")
            with conn.getresponse() as response:
                result["status"] = response.status
                result["connection"] = response.getheader("Connection")
                result["body"] = response.read()
        finally:
            conn.close()

    thread = threading.Thread(target=in_flight)
    try:
        idle.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nok\n"):
            chunk = idle.recv(4096)
            assert chunk, answer
            answer += chunk
        thread.start()
        wait_until(lambda: established_to(address[1]) >= 2, what="the gated request connected")
        server.send(signal.SIGTERM)
        server.wait_for_line("TERM: draining")  # the drain began with the request in flight
        # The idle one gets a close_notify, then EOF: a clean TLS close (recv returns b"").
        assert idle.recv(4096) == b""
        (tmp_path / "open").touch()  # now the request in flight may finish
    finally:
        idle.close()
        (tmp_path / "open").touch()
        thread.join(timeout=30)
    assert result == {"status": 200, "connection": "close", "body": b"released\n"}
    assert server.wait_exit() == 0


def established_to(port: int) -> int:
    return sum(1 for row in tcp_sockets(state=ESTABLISHED) if row.local_port == port)


def test_the_library_serves_https_with_its_options(
    pki: Pki, server_cert: tuple[Path, Path]
) -> None:
    from graceserve import WSGIOptions, make_server

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        body = str(environ["wsgi.url_scheme"]).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    options = WSGIOptions(certfile=str(server_cert[0]), keyfile=str(server_cert[1]))
    server = make_server("127.0.0.1", 0, app, options=options)
    assert server.ssl_context is not None  # built with the server, not at the first connection
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert https_get((str(host), port), "/", pki.client_context())[:2] == (200, b"https")
    finally:
        report = server.drain(5.0)
        thread.join(timeout=5)
        server.server_close()
    assert report.clean


def test_a_certificate_that_does_not_load_fails_the_constructor(tmp_path: Path) -> None:
    import http.server

    missing = str(tmp_path / "missing.pem")
    with pytest.raises(TLSSettingsError, match=r"missing\.pem"):
        GracefulHTTPServer(
            ("127.0.0.1", 0), http.server.BaseHTTPRequestHandler,
            options=HTTPOptions(certfile=missing),
        )  # fmt: skip
