"""Behind a proxy: X-Forwarded-* and RFC 7239 Forwarded, believed only from trusted peers.

Unit tests pin the rules (the right-most untrusted hop is the client,
Forwarded wins, malformed values are ignored); the end-to-end tests run a WSGI
app and a handler target with a trusted peer (loopback, the default) and an
untrusted one (``--forwarded-allow-ips`` naming another address).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from graceserve.http.proxy import MAX_HOPS, Forwarded, forwarded, parse_allow_ips
from testsupport.process import ServerProcess
from testsupport.tlsapp import APP

StartServer = Callable[..., ServerProcess]
LOOPBACK = parse_allow_ips("127.0.0.1,::1")


def fwd(
    headers: dict[str, str], peer: str = "127.0.0.1", allow: str = "127.0.0.1,::1"
) -> Forwarded:
    return forwarded(peer, headers, parse_allow_ips(allow))


def test_x_forwarded_from_a_trusted_peer() -> None:
    got = fwd({"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https",
               "x-forwarded-host": "example.com"})  # fmt: skip
    assert got == Forwarded("203.0.113.7", None, "https", "example.com")


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    # The client sent its own X-Forwarded-For (spoofed 1.1.1.1); our proxy appended the
    # real peer 203.0.113.7: that one is the client, not the spoofed value.
    assert fwd({"x-forwarded-for": "1.1.1.1, 203.0.113.7"}).client == "203.0.113.7"
    # Through two trusted proxies (10.0.0.2 is one too): skip it.
    allow = "127.0.0.1,10.0.0.0/8"
    assert fwd({"x-forwarded-for": "1.1.1.1, 203.0.113.7, 10.0.0.2"}, allow=allow).client == (
        "203.0.113.7"
    )
    # With "*" every hop is trusted: the left-most is the client.
    assert fwd({"x-forwarded-for": "198.51.100.1, 203.0.113.7"}, allow="*").client == "198.51.100.1"


def test_untrusted_peers_are_ignored() -> None:
    headers = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}
    assert fwd(headers, peer="192.0.2.9") == Forwarded()
    assert fwd(headers, peer="192.0.2.9", allow="") == Forwarded()
    assert fwd(headers, peer="unix") == Forwarded("203.0.113.7", None, "https", None)


def test_rfc_7239_forwarded() -> None:
    rfc = 'for=192.0.2.60;proto=https;host=example.com, for="[2001:db8::17]:4711"'
    got = fwd({"forwarded": rfc, "x-forwarded-for": "9.9.9.9"})
    assert got == Forwarded("2001:db8::17", "4711", "https", "example.com")
    assert fwd({"forwarded": "for=192.0.2.60:8080;proto=http"}) == Forwarded(
        "192.0.2.60", "8080", "http", None
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forwarded-for": "not-an-address"},
        {"x-forwarded-for": "1.2.3.4, bogus"},
        {"x-forwarded-for": "1.2.3.4, "},
        {"forwarded": "for=unknown"},
        {"forwarded": "for=_hidden;proto=https"},
        {"forwarded": "for=1.2.3.4;junk"},
        {"forwarded": 'for="[::1'},
        {"x-forwarded-for": "1.2.3.4:notaport"},
    ],
)
def test_malformed_values_are_ignored(headers: dict[str, str]) -> None:
    assert fwd(headers).client is None


@pytest.mark.parametrize(
    "headers",
    [
        # A zone identifier means something only on the proxy's own host, and its free
        # text would become REMOTE_ADDR and the access log's first field.
        {"x-forwarded-for": "fe80::1%eth0"},
        {"x-forwarded-for": 'fe80::1%x - - [01-Jan-2030] "POST \\login" 200'},
        {"x-forwarded-for": "[fe80::1%eth0]:80"},
        {"forwarded": 'for="[fe80::1%25eth0]"'},
        {"forwarded": 'for="[fe80::1%eth0]:80"'},
        # A port is 1 to 65535 in ASCII digits.
        {"x-forwarded-for": "1.2.3.4:\u00b2"},
        {"x-forwarded-for": "1.2.3.4:\u0661"},
        {"x-forwarded-for": "1.2.3.4:0"},
        {"x-forwarded-for": "1.2.3.4:65536"},
        {"x-forwarded-for": "1.2.3.4:000080"},
        {"x-forwarded-for": "1.2.3.4:"},
        {"x-forwarded-for": "[::1]:"},
        {"x-forwarded-for": "[::1]x"},
        {"forwarded": 'for="192.0.2.1:99999"'},
    ],
)
def test_what_rfc_7239_does_not_allow_is_not_believed(headers: dict[str, str]) -> None:
    assert fwd(headers).client is None


def test_ports_and_quoted_pairs_that_rfc_7239_allows() -> None:
    assert fwd({"x-forwarded-for": "1.2.3.4:65535"}) == Forwarded("1.2.3.4", "65535")
    assert fwd({"forwarded": 'for="[::1]:1"'}) == Forwarded("::1", "1")
    got = fwd({"forwarded": 'for="\\1.2.3.4";host="ex\\ample.com:8\\0"'})
    assert (got.client, got.host) == ("1.2.3.4", "example.com:80")


@pytest.mark.parametrize(
    "host", ["good.com@evil.com", 'evil.com"><script>', "a%zz", "[fe80::1%25eth0]", "", ":80"]
)
def test_a_forwarded_host_is_held_to_the_rules_of_an_authority(host: str) -> None:
    assert fwd({"x-forwarded-for": "203.0.113.7", "x-forwarded-host": host}).host is None
    assert fwd({"forwarded": f'for=203.0.113.7;host="{host}"'}).host is None


def test_only_the_right_most_hops_are_read() -> None:
    # More trusted hops in a row than MAX_HOPS: the chain was written by the client
    # (who could prepend any address), so the walk stops where the window ends.
    allow = "127.0.0.1,10.0.0.0/8"
    trusted = ", ".join(f"10.0.0.{n % 250 + 1}" for n in range(MAX_HOPS))
    got = fwd({"x-forwarded-for": "198.51.100.1, " + trusted}, allow=allow)
    assert got.client == "10.0.0.1"
    assert fwd({"x-forwarded-for": "bogus, " + trusted}, allow=allow).client == "10.0.0.1"
    elements = ", ".join(["for=10.0.0.1"] * MAX_HOPS)
    assert fwd({"forwarded": "for=bogus;junk, " + elements}, allow=allow).client == "10.0.0.1"
    # X-Forwarded-Proto still lines up with its own hop.
    protos = ", ".join(["https"] + ["http"] * MAX_HOPS)
    got = fwd({"x-forwarded-for": "198.51.100.1, " + trusted, "x-forwarded-proto": protos},
              allow="*")  # fmt: skip
    assert (got.client, got.proto) == ("10.0.0.1", "http")


def test_garbage_left_of_the_client_is_the_client_s_own_business() -> None:
    # What lies left of the right-most untrusted hop came from the client: not read.
    assert fwd({"x-forwarded-for": "bogus, 5.6.7.8"}).client == "5.6.7.8"


def test_bad_scheme_and_host_are_ignored() -> None:
    got = fwd({"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "gopher",
               "x-forwarded-host": "a b/c"})  # fmt: skip
    assert got == Forwarded("203.0.113.7", None, None, None)


def test_allow_list_parsing() -> None:
    assert parse_allow_ips("*").any
    assert parse_allow_ips("10.0.0.0/8, ::1").trusts("10.1.2.3")
    assert parse_allow_ips("127.0.0.1").trusts("::ffff:127.0.0.1")
    with pytest.raises(ValueError, match="not an IP address"):
        parse_allow_ips("localhost")


# -- end to end -----------------------------------------------------------------------

HANDLER = """\
import http.server
import json


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({
            "remote_addr": self.forwarded_client,
            "scheme": self.forwarded_proto,
            "host": self.forwarded_host,
            "socket": self.client_address[0],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
"""

FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "shop.example"}  # fmt: skip


def ask(address: tuple[str, int], headers: dict[str, str]) -> dict[str, object]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/", headers=headers)
        with conn.getresponse() as response:
            assert response.status == 200
            result = json.loads(response.read())
            assert isinstance(result, dict)
            return result
    finally:
        conn.close()


@pytest.mark.parametrize("target", ["app:app", "handler:Handler"])
def test_forwarded_headers_end_to_end(
    start_server: StartServer, tmp_path: Path, target: str
) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "handler.py").write_text(HANDLER)
    log_path = tmp_path / "access.log"
    trusted = start_server(
        [target, "--bind", "127.0.0.1:0", "--access-log", str(log_path), "--access-log-format",
         "json"], cwd=tmp_path,
    )  # fmt: skip
    address = trusted.wait_ready()
    got = ask(address, FORWARDED)
    assert (got["remote_addr"], got["scheme"], got["host"]) == (
        "203.0.113.7",
        "https",
        "shop.example",
    )
    malformed = ask(address, {"X-Forwarded-For": "<script>", "X-Forwarded-Proto": "ftp"})
    assert (malformed["remote_addr"], malformed["scheme"]) == ("127.0.0.1", "http")
    # The access log names the forwarded client.
    from testsupport.waiting import wait_until

    wait_until(lambda: log_path.exists() and len(log_path.read_text().splitlines()) >= 2)
    clients = [json.loads(line)["client"] for line in log_path.read_text().splitlines()]
    # Each line is written after its response went out, by its connection's thread: the
    # two requests' lines may land in either order.
    assert sorted(clients) == ["127.0.0.1", "203.0.113.7"]
    # A server that trusts another address ignores the same headers from us.
    untrusted = start_server(
        [target, "--bind", "127.0.0.1:0", "--forwarded-allow-ips", "192.0.2.1"], cwd=tmp_path
    )
    got = ask(untrusted.wait_ready(), FORWARDED)
    assert (got["remote_addr"], got["scheme"]) == ("127.0.0.1", "http")
    assert got["host"] != "shop.example"


def test_a_bad_allow_list_is_a_usage_error(start_server: StartServer) -> None:
    server = start_server(["--bind", "127.0.0.1:0"], env={"GRACESERVE_FORWARDED_ALLOW_IPS": "lan"})
    assert server.wait_exit() == 2
    assert "GRACESERVE_FORWARDED_ALLOW_IPS" in server.output
