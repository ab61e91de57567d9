"""Real container stop tests: the Dockerfile's image under ``podman stop``.

Why these exist: inside a container graceserve is PID 1, started by the exec-form
ENTRYPOINT, and the runtime's stop (STOPSIGNAL, a grace, then SIGKILL) decides whether
an in-flight request is finished or cut. Nothing here is mocked: the repository's
Dockerfile is built with podman (which stops containers exactly like ``docker stop``)
and real requests go to it over 127.0.0.1 only (``--network host`` or ``none``).

Needs root, podman and the stand-in base image ``localhost/pyslim:bookworm`` (no
container registry is reachable here): run ``.ci/container-setup`` first, which also
writes the podman configuration this module uses. Without them every test is skipped
with the reason; with ``GRACESERVE_CONTAINER_TESTS=require`` (CI) they fail instead.

In-flight detection without sleeps: with ``--network host`` the container's sockets are
in the host's ``/proc/net/tcp``. A request is in flight once the listener's accept
queue is empty and the server's end of our connection has no unread bytes, i.e. a
handler thread has read the request.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from graceserve.process.readiness import parse_ready
from testsupport.procfs import ESTABLISHED, LISTEN, tcp_sockets
from testsupport.workers import Load

REPO_ROOT = Path(__file__).resolve().parent.parent
PODMAN_DIR = Path(os.environ.get("GRACESERVE_PODMAN_DIR", "/var/tmp/graceserve-podman"))
CONTAINERS_CONF = PODMAN_DIR / "containers.conf"
BASE_IMAGE = "localhost/pyslim:bookworm"
TEST_IMAGE = "localhost/graceserve-test:latest"

BUILD_TIMEOUT = 240.0  # seconds for `podman build` (pip install inside the build)
COMMAND_TIMEOUT = 30.0  # seconds for any other podman command
READY_TIMEOUT = 20.0  # seconds for the readiness line to appear in `podman logs`
INFLIGHT_TIMEOUT = 10.0  # seconds for the server to read a request we sent
POLL_PAUSE = 0.05  # pause inside bounded polling loops


pytestmark = [pytest.mark.container, pytest.mark.timeout(300)]


def _unavailable(reason: str, *, setup_hint: bool = True) -> None:
    """Skip (or fail, when CI requires the container tests) with *reason*."""
    message = f"{reason}; run .ci/container-setup first" if setup_hint else reason
    if os.environ.get("GRACESERVE_CONTAINER_TESTS") == "require":
        pytest.fail(message)
    pytest.skip(message)


def podman(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` with the setup script's configuration; never raises."""
    env = dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))
    return subprocess.run(
        ["podman", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def podman_ok(*args: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``podman ARGS``; fail the test unless it exits 0; return its stdout."""
    result = podman(*args, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(
            f"podman {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """Build the repository's Dockerfile once for this module; remove it afterwards."""
    if shutil.which("podman") is None:
        _unavailable("podman is not installed")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _unavailable(
            "the container tests need root (podman runs the containers as root)",
            setup_hint=False,
        )
    if not CONTAINERS_CONF.is_file():
        _unavailable(f"{CONTAINERS_CONF} is missing")
    if podman("image", "exists", BASE_IMAGE).returncode != 0:
        _unavailable(f"the base image {BASE_IMAGE} is not present")
    # Docker format keeps HEALTHCHECK (the OCI format drops it).
    podman_ok(
        "build",
        "--format",
        "docker",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-t",
        TEST_IMAGE,
        str(REPO_ROOT),
        timeout=BUILD_TIMEOUT,
    )
    yield TEST_IMAGE
    podman("rmi", TEST_IMAGE)


@pytest.fixture
def run_container(image: str) -> Iterator[Callable[..., str]]:
    """Start containers of the test image; force-remove exactly those at teardown."""
    started: list[str] = []

    def run(*options: str, command: Sequence[str] = ()) -> str:
        container_id = podman_ok("run", "-d", *options, image, *command).strip()
        started.append(container_id)
        return container_id

    yield run
    for container_id in started:
        podman("rm", "-f", "-t", "0", container_id)


def logs(container_id: str) -> str:
    """Return everything the container wrote (graceserve logs to stderr)."""
    result = podman("logs", container_id)
    return result.stdout + result.stderr


def state(container_id: str) -> tuple[str, int, bool]:
    """Return (status, exit code, OOM-killed) of a container."""
    out = podman_ok(
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}",
        container_id,
    ).split()
    return out[0], int(out[1]), out[2] == "true"


def wait_listening(container_id: str) -> str:
    """Poll the logs until graceserve's readiness line appears; return that line."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        text = logs(container_id)
        for line in text.splitlines():
            if parse_ready(line) is not None:
                return line
        if state(container_id)[0] not in {"created", "running"}:
            pytest.fail(f"container exited before listening:\n{text}")
        time.sleep(POLL_PAUSE)
    pytest.fail(f"no readiness line within {READY_TIMEOUT} s:\n{logs(container_id)}")


def start_on_loopback(run_container: Callable[..., str], *env: str) -> tuple[str, int]:
    """Run a container on the host network bound to 127.0.0.1:0; return (id, port)."""
    options = ["--network", "host", "-e", "GRACESERVE_BIND=127.0.0.1:0"]
    for assignment in env:
        options += ["-e", assignment]
    container_id = run_container(*options)
    line = wait_listening(container_id)
    ready = parse_ready(line)
    assert ready is not None, f"not a readiness line: {line!r}"
    assert ready.host == "127.0.0.1", f"readiness line names no 127.0.0.1 address: {line!r}"
    assert ready.port is not None
    # Exec-form ENTRYPOINT: graceserve itself is PID 1 (no shell to swallow TERM).
    assert ready.pid == 1, f"graceserve is not PID 1: {line!r}"
    return container_id, ready.port


def wait_request_read(server_port: int, client_port: int) -> None:
    """Poll until the server accepted our connection and read every byte we sent."""
    deadline = time.monotonic() + INFLIGHT_TIMEOUT
    while time.monotonic() < deadline:
        table = tcp_sockets(("/proc/net/tcp",))
        backlog = [e for e in table if e.local_port == server_port and e.state == LISTEN]
        ours = [
            e
            for e in table
            if e.local_port == server_port
            and e.remote_port == client_port
            and e.state == ESTABLISHED
        ]
        if backlog and backlog[0].unread == 0 and ours and ours[0].unread == 0:
            return
        time.sleep(POLL_PAUSE)
    pytest.fail(f"the server did not read the request within {INFLIGHT_TIMEOUT} s")


@dataclass
class Response:
    """What the client got: a status and complete body, or the error that ended it."""

    status: int | None = None
    body: bytes = b""
    error: BaseException | None = None


def send_slow_request(
    port: int, seconds: float, pool: ThreadPoolExecutor
) -> tuple[Future[Response], int]:
    """Send GET /slow?seconds=N, read the answer in a thread; return (future, port)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.connect()
    assert conn.sock is not None
    client_port: int = conn.sock.getsockname()[1]
    conn.request("GET", f"/slow?seconds={seconds:g}")

    def read() -> Response:
        try:
            response = conn.getresponse()
            # read() raises IncompleteRead if the body is shorter than Content-Length.
            return Response(status=response.status, body=response.read())
        except (OSError, http.client.HTTPException) as exc:
            return Response(error=exc)
        finally:
            conn.close()

    return pool.submit(read), client_port


def wait_log(container_id: str, pattern: str) -> None:
    """Poll the container's log (with a deadline) until a line matches ``pattern``."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not re.search(pattern, logs(container_id)):
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} in the logs:\n{logs(container_id)}")
        time.sleep(POLL_PAUSE)


def timed_stop(container_id: str, grace: int) -> float:
    """Run ``podman stop -t GRACE`` and return how long it took."""
    start = time.monotonic()
    podman_ok("stop", "-t", str(grace), container_id, timeout=grace + COMMAND_TIMEOUT)
    return time.monotonic() - start


def test_stop_drains_in_flight_request_and_exits_0(
    run_container: Callable[..., str],
) -> None:
    container_id, port = start_on_loopback(run_container)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future, client_port = send_slow_request(port, 2, pool)
        wait_request_read(port, client_port)
        elapsed = timed_stop(container_id, 10)
        response = future.result(timeout=30)
    output = logs(container_id)

    assert response.error is None, f"slow request failed: {response.error!r}\n{output}"
    assert response.status == 200, output
    assert response.body, "the slow request's body is empty"
    status, exit_code, oom_killed = state(container_id)
    assert (status, exit_code, oom_killed) == ("exited", 0, False), output
    # Drained by itself in ~2 s: PID 1 handled TERM; SIGKILL (at 10 s) was never sent.
    assert elapsed < 8, f"podman stop took {elapsed:.1f} s:\n{output}"


def test_stop_grace_shorter_than_request_ends_in_sigkill(
    run_container: Callable[..., str],
) -> None:
    # Negative control: graceserve's own grace (30 s) outlasts podman's (2 s), so the
    # runtime's SIGKILL ends it: exit 137, and the request is cut, not answered.
    container_id, port = start_on_loopback(run_container, "GRACESERVE_GRACE=30")
    with ThreadPoolExecutor(max_workers=1) as pool:
        future, client_port = send_slow_request(port, 20, pool)
        wait_request_read(port, client_port)
        elapsed = timed_stop(container_id, 2)
        response = future.result(timeout=30)
    output = logs(container_id)

    assert state(container_id)[:2] == ("exited", 137), output
    assert response.status is None, response
    assert response.error is not None, response
    assert 1.5 < elapsed < 10, f"podman stop took {elapsed:.1f} s"


def test_image_defaults_healthcheck_and_non_root(
    run_container: Callable[..., str],
) -> None:
    # The image as shipped: GRACESERVE_BIND=0.0.0.0:8000 in its own network namespace
    # (--network none: loopback only), a HEALTHCHECK that passes, a non-root user, and
    # a quick exit 0 on stop with nothing in flight.
    container_id = run_container("--network", "none")
    line = wait_listening(container_id)
    assert "0.0.0.0:8000" in line, line

    check = podman("healthcheck", "run", container_id)
    assert check.returncode == 0, f"healthcheck failed: {check.stdout}{check.stderr}"
    assert podman_ok("exec", container_id, "id", "-u").strip() == "10001"
    hello = podman_ok(
        "exec",
        container_id,
        "python3",
        "-c",
        "import urllib.request as r;print(r.urlopen('http://127.0.0.1:8000/', timeout=5).status)",
    )
    assert hello.strip() == "200"

    elapsed = timed_stop(container_id, 10)
    assert state(container_id)[:2] == ("exited", 0), logs(container_id)
    assert elapsed < 5, f"an idle server took {elapsed:.1f} s to stop"


HEALTHZ_STATUS = (
    "import urllib.request as r, urllib.error as e\n"
    "try:\n"
    "    print(r.urlopen('http://127.0.0.1:8000/healthz', timeout=5).status)\n"
    "except e.HTTPError as error:\n"
    "    print(error.code)\n"
)


PLAIN_APP = """\
def app(environ, start_response):
    found = environ["PATH_INFO"] == "/"
    start_response("200 OK" if found else "404 Not Found", [("Content-Type", "text/plain")])
    return [b"hello" if found else b"not here"]
"""


def test_an_app_without_a_health_route_is_healthy_in_the_shipped_image(
    run_container: Callable[..., str], tmp_path: Path
) -> None:
    # A WSGI app with no /healthz route (as every Flask or Django app) built FROM the
    # image: the image's GRACESERVE_HEALTH_PATH=/healthz has graceserve answer it.
    tmp_path.chmod(0o755)
    (tmp_path / "plainapp.py").write_text(PLAIN_APP)
    (tmp_path / "plainapp.py").chmod(0o644)
    container_id = run_container(
        "--network", "none", "-v", f"{tmp_path}:/plain:ro", "-w", "/plain",
        command=["plainapp:app"],
    )  # fmt: skip
    wait_listening(container_id)
    check = podman("healthcheck", "run", container_id)
    assert check.returncode == 0, f"healthcheck failed: {check.stdout}{check.stderr}"
    status = podman_ok("exec", container_id, "python3", "-c", HEALTHZ_STATUS).strip()
    assert status == "200", logs(container_id)


def test_healthcheck_fails_while_draining(run_container: Callable[..., str]) -> None:
    # SIGTERM starts a long lame-duck phase: the listener stays open but /healthz answers
    # 503, and the image's HEALTHCHECK must then fail (not only once the port closes).
    container_id = run_container("--network", "none", "-e", "GRACESERVE_DRAIN_DELAY=60")
    wait_listening(container_id)
    assert podman("healthcheck", "run", container_id).returncode == 0
    podman_ok("kill", "--signal", "TERM", container_id)

    deadline = time.monotonic() + READY_TIMEOUT
    status = ""
    while time.monotonic() < deadline:
        status = podman_ok("exec", container_id, "python3", "-c", HEALTHZ_STATUS).strip()
        if status == "503":
            break
        time.sleep(POLL_PAUSE)
    assert status == "503", f"/healthz still answers {status} after TERM:\n{logs(container_id)}"
    check = podman("healthcheck", "run", container_id)
    assert check.returncode != 0, f"healthcheck passed while draining: {check.stdout}"


def test_hup_to_the_shipped_image_under_load_keeps_serving_then_stop_drains(
    run_container: Callable[..., str],
) -> None:
    """The shipped image as it is (one process, PID 1): ``podman kill -s HUP`` under
    keep-alive load reloads without a failed request and PID 1 stays; then ``podman
    stop`` drains and exits 0 (a HUP that replaced PID 1 used to end the container)."""
    container_id, port = start_on_loopback(run_container)
    load = Load(("127.0.0.1", port), clients=8)
    try:
        load.wait_for_requests(100)
        podman_ok("kill", "-s", "HUP", container_id)
        wait_log(container_id, r"HUP: generation 2 is ready")
        load.wait_for_requests(200)  # still serving, now from the new worker
    finally:
        load.stop()
    output = logs(container_id)
    assert load.failures == [], output
    elapsed = timed_stop(container_id, 10)
    output = logs(container_id)
    assert state(container_id)[:2] == ("exited", 0), output
    assert elapsed < 8, f"podman stop took {elapsed:.1f} s:\n{output}"


def test_workers_2_reload_then_stop_drains_in_flight_request_and_exits_0(
    run_container: Callable[..., str],
) -> None:
    """--workers 2 in the shipped image: the supervisor is PID 1, a HUP (podman kill -s HUP)
    starts a new generation and PID 1 stays, then podman stop drains a request in flight."""
    options = ["--network", "host", "-e", "GRACESERVE_BIND=127.0.0.1:0"]
    container_id = run_container(*options, "-e", "GRACESERVE_WORKERS=2")
    ready = parse_ready(wait_listening(container_id))
    assert ready is not None
    assert ready.port is not None
    port = ready.port

    wait_log(container_id, r"supervisor pid 1: 2 workers ready")
    podman_ok("kill", "-s", "HUP", container_id)
    wait_log(container_id, r"HUP: generation 2 is ready")
    with ThreadPoolExecutor(max_workers=1) as pool:
        future, client_port = send_slow_request(port, 2, pool)
        wait_request_read(port, client_port)
        elapsed = timed_stop(container_id, 10)
        response = future.result(timeout=30)
    output = logs(container_id)
    assert response.error is None, f"slow request failed: {response.error!r}\n{output}"
    assert response.status == 200, output
    assert state(container_id)[:2] == ("exited", 0), output
    assert elapsed < 8, f"podman stop took {elapsed:.1f} s:\n{output}"
    assert re.search(r"stopped: \d workers, 1 served during the drain, 0 cut", output), output
