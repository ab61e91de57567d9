"""``--metrics-bind``: Prometheus metrics from the main process, summed over every worker.

The meter and the board on their own (no sockets): statuses by class, the
histogram's buckets, the channel words, and a board whose members come and go
without a counter ever going back.  Then real servers (``python -m graceserve``)
of both kinds, in one process and under ``--workers 2``: the text parses
strictly as Prometheus' format (``testsupport.prometheus``), the requests are
counted, a HUP leaves every counter where it was or higher, a failed reload is
counted, the drain shows ``graceserve_draining 1`` while a request holds the
stop, and the endpoint goes away with the process.  Bad addresses: exit 2 with
one line; an address in use: exit 3.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from graceserve.core.metering import BUCKETS, FOLD_AT, Meters, RequestMeter
from graceserve.process.metrics import MetricsBoard
from graceserve.process.status import ServerStatus
from testsupport.process import REPO, ServerProcess, child_env
from testsupport.prometheus import Exposition, parse, scrape
from testsupport.serve import KINDS, Gate, Mode, Served, serve
from testsupport.targets import BREAK_IMPORT
from testsupport.waiting import wait_until

TIMEOUT = 30.0
ONE, WORKERS = Mode("one", 1, False), Mode("workers2", 2, False)
METRICS_LINE = r"metrics on (http://\S+/metrics)"


# -- the meter and the board ----------------------------------------------------------


def test_the_meter_counts_answered_requests_by_class_and_bucket() -> None:
    meter = RequestMeter()
    for status, seconds in [(200, 0.001), (204, 0.005), (301, 0.3), (404, 11.0), (503, 2.0)]:
        meter.record(status, seconds)
    meter.record(0, 1.0)  # never answered (a head cut short): not a request answered
    meters = meter.snapshot()
    assert meters.codes == [0, 2, 1, 1, 1]
    assert meters.count == 5
    expected = [0] * (len(BUCKETS) + 1)
    expected[0] = 2  # 0.001 and 0.005: le="0.005" includes its bound
    expected[BUCKETS.index(0.5)] = 1
    expected[BUCKETS.index(2.5)] = 1
    expected[-1] = 1  # 11 s: +Inf only
    assert meters.buckets == expected
    assert meters.seconds == pytest.approx(13.306)


def test_the_recording_thread_folds_once_the_queue_is_long() -> None:
    meter = RequestMeter()
    for _ in range(FOLD_AT + 1):
        meter.record(200, 0.0)
    assert len(meter._pending) == 0  # bounded even if nobody scrapes
    assert meter.snapshot().codes[1] == FOLD_AT + 1


def test_meters_cross_the_channel_as_words() -> None:
    meters = Meters(True, 1, 2, 3, [1, 2, 3, 4, 5], list(range(len(BUCKETS) + 1)), 0.125)
    assert Meters.from_words(meters.to_words()) == meters
    tcp = Meters(http=False, active=4)
    assert Meters.from_words(" ".join(tcp.to_words()).split(" ")) == tcp
    for broken in (meters.to_words()[:-1], ["udp", *meters.to_words()[1:]], ["http", "-1"]):
        with pytest.raises(ValueError, match=r"snapshot|invalid literal"):
            Meters.from_words(broken)


def test_a_members_counters_outlive_it_on_the_board() -> None:
    board = MetricsBoard(ServerStatus())
    first = Meters(codes=[0, 5, 0, 1, 0], seconds=1.0, active=2)
    first.buckets[0] = 6
    board.update(1, first)
    second = Meters(codes=[0, 1, 0, 0, 0], idle=1)
    second.buckets[-1] = 1
    board.attach(2, lambda: second)
    before = parse(board.render())
    assert before.value("graceserve_requests_total", code="2xx") == 6
    assert before.value("graceserve_connections", state="active") == 2
    board.retire(1)  # exited: its counters stay, its gauges go
    after = parse(board.render())
    assert after.value("graceserve_requests_total", code="2xx") == 6
    assert after.value("graceserve_request_duration_seconds_count") == 7
    assert after.value("graceserve_connections", state="active") == 0
    assert after.value("graceserve_connections", state="idle") == 1


def test_a_tcp_target_shows_connections_only() -> None:
    board = MetricsBoard(ServerStatus())
    board.update(1, Meters(http=False, active=3))
    seen = parse(board.render())
    assert not seen.has_family("graceserve_requests_total")
    assert not seen.has_family("graceserve_request_duration_seconds")
    assert seen.value("graceserve_connections", state="active") == 3


@pytest.mark.parametrize(
    "text",
    [
        "# TYPE a counter\na 1",  # no final newline
        "a 1\n",  # no TYPE
        "# TYPE a counter\na -1\n",  # a counter below zero
        '# TYPE a gauge\na{x="1",x="2"} 1\n',  # a label twice
        '# TYPE a gauge\na{x="\\q"} 1\n',  # a bad escape
        "# TYPE a gauge\na one\n",  # not a number
        "# TYPE a gauge\na 1\na 2\n",  # a series twice
        "# TYPE a gauge\n# TYPE b gauge\nb 1\na 1\n",  # a family not together
        '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
        '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 1\n',
    ],
)
def test_the_parser_is_strict(text: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):  # any one-line reason
        parse(text)


# -- real servers ---------------------------------------------------------------------------


def metrics_url(served: Served) -> str:
    return re.search(METRICS_LINE, served.wait_line(METRICS_LINE))[1]  # type: ignore[index]


def bad_request(address: tuple[str, int]) -> bytes:
    """A head graceserve refuses itself (400), whatever the app."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def requests_total(seen: Exposition) -> float:
    return sum(seen.value("graceserve_requests_total", code=c) for c in ("2xx", "4xx"))


def scrape_until(url: str, done: object, what: str) -> Exposition:
    """Scrape until ``done(exposition)`` (workers report once a second)."""
    found: list[Exposition] = []

    def check() -> bool:
        found[:] = [scrape(url)]
        return bool(done(found[0]))  # type: ignore[operator]

    wait_until(check, TIMEOUT, what)
    return found[0]


def counters(seen: Exposition) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {key: value for key, value in seen.samples.items() if _counted(seen, key[0])}


def _counted(seen: Exposition, name: str) -> bool:
    family = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
    return seen.types.get(family) in ("counter", "histogram") or seen.types.get(name) == "counter"


@pytest.mark.slow
@pytest.mark.parametrize("mode", [ONE, WORKERS], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_requests_are_counted_across_workers_and_a_reload_never_takes_one_back(
    kind: str, mode: Mode
) -> None:
    with serve(kind, mode, args=["--metrics-bind", "127.0.0.1:0"]) as served:
        url = metrics_url(served)
        for _ in range(6):
            assert served.get("/").status == 200
        assert bad_request(served.address).startswith(b"HTTP/1.1 400 ")
        seen = scrape_until(url, lambda s: requests_total(s) >= 7, "7 requests counted")
        assert seen.value("graceserve_requests_total", code="2xx") == 6
        assert seen.value("graceserve_requests_total", code="4xx") == 1
        assert seen.value("graceserve_request_duration_seconds_count") == 7
        assert 0 < seen.value("graceserve_request_duration_seconds_sum") < 7 * 10
        assert seen.value("graceserve_workers") == mode.workers
        assert seen.value("graceserve_draining") == 0
        before = counters(seen)
        served.reload()  # the serving members are replaced by a new generation
        after = scrape_until(url, lambda s: s.value("graceserve_reloads_total") >= 1, "the reload")
        for key, value in before.items():
            assert counters(after)[key] >= value, key  # never backwards
        assert after.value("graceserve_reload_failures_total") == 0
        assert served.get("/").status == 200  # the new generation's requests add up
        scrape_until(url, lambda s: requests_total(s) >= 8, "the new generation's request")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=TIMEOUT)
        assert caught.value.code == 404
        caught.value.close()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(url, b"", method="POST"), timeout=TIMEOUT)
        assert caught.value.code == 405
        assert caught.value.headers["Allow"] == "GET, HEAD"
        caught.value.close()
        served.stop()
        assert served.wait_exit(TIMEOUT) == 0
    with pytest.raises(urllib.error.URLError):  # closed with the process
        urllib.request.urlopen(url, timeout=TIMEOUT)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [ONE, WORKERS], ids=str)
def test_draining_shows_one_while_a_request_holds_the_stop(mode: Mode) -> None:
    with Gate() as gate, serve("wsgi", mode, args=["--metrics-bind", "127.0.0.1:0"]) as served:
        url = metrics_url(served)
        conn = served.connect()
        conn.request("GET", gate.target)
        gate.wait_entered()
        scrape_until(
            url, lambda s: s.value("graceserve_requests_in_flight") == 1, "one request in flight"
        )
        served.stop()
        held = scrape_until(url, lambda s: s.value("graceserve_draining") == 1, "draining 1")
        assert held.value("graceserve_connections", state="active") >= 1
        gate.release()
        assert conn.read_reply().status == 200
        conn.close()
        assert served.wait_exit(TIMEOUT) == 0


@pytest.mark.slow
def test_a_failed_reload_and_a_worker_restart_are_counted(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    env = child_env({BREAK_IMPORT: str(broken)})
    args = ["--metrics-bind", "127.0.0.1:0", "--start-timeout", "10"]
    with serve("handler", WORKERS, args=args, env=env) as served:
        url = metrics_url(served)
        broken.touch()
        done = served.ctl("graceful")
        assert done.returncode != 0, done.stdout + done.stderr
        seen = scrape(url)
        assert seen.value("graceserve_reload_failures_total") == 1
        assert seen.value("graceserve_reloads_total") == 1
        broken.unlink()
        workers = scrape_until(url, lambda s: s.value("graceserve_workers") == 2, "2 workers")
        assert workers.value("graceserve_worker_restarts_total") == 0
        victim = served.get("/").json()["pid"]
        assert isinstance(victim, int)
        os.kill(victim, signal.SIGKILL)
        scrape_until(
            url, lambda s: s.value("graceserve_worker_restarts_total") == 1, "a restart counted"
        )


def test_a_tcp_target_serves_connection_metrics_only() -> None:
    server = ServerProcess(
        ["--bind", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0", "examples.echo:Handler"],
        cwd=REPO,
    )
    try:
        address = server.wait_ready()
        url = re.search(METRICS_LINE, server.wait_for_line(METRICS_LINE).string)[1]  # type: ignore[index]
        with socket.create_connection(address, timeout=TIMEOUT):
            seen = scrape_until(
                url, lambda s: s.value("graceserve_connections", state="active") == 1, "1 conn"
            )
        assert not seen.has_family("graceserve_requests_total")
        server.send(signal.SIGTERM)
        assert server.wait_exit(TIMEOUT) == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--metrics-bind", "nohost"], {}),
        (["--metrics-bind", "127.0.0.1:70000"], {}),
        (["--metrics-bind", "unix:/tmp/metrics.sock"], {}),
        ([], {"GRACESERVE_METRICS_BIND": "9100"}),
    ],
)
def test_a_bad_address_is_one_line_and_exit_2(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "graceserve", *args], env=child_env(env),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "METRICS_BIND" in done.stderr or "--metrics-bind" in done.stderr


def test_the_config_file_names_it_metrics_bind(tmp_path: Path) -> None:
    config = tmp_path / "conf.py"
    config.write_text('metrics_bind = "127.0.0.1:bad"\n')
    done = subprocess.run(
        [sys.executable, "-m", "graceserve", "-c", str(config), "--check-config"],
        env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "metrics_bind" in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_address_in_use_is_exit_3_before_serving(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "graceserve", "--bind", "127.0.0.1:0",
             "--metrics-bind", f"127.0.0.1:{port}", "--workers", workers],
            env=child_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"--metrics-bind: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "listening on" not in done.stderr
