"""The shipped unit files under a real systemd: ``examples/graceserve.service`` and ``.socket``.

Why these exist: what ``systemctl stop`` and ``systemctl reload`` do to requests in flight
depends on how systemd tracks the main process (``Type=notify``, ``MAINPID=``,
``KillMode=mixed``), which no mock reproduces. So a Debian bookworm systemd 252 boots as
PID 1 of a podman container (image ``localhost/pyslim-systemd:bookworm``, built by
``.ci/systemd-setup``), graceserve is pip-installed in it from this checkout, and the
unit file is installed unmodified (the grace-cut test adds a runtime drop-in that only
shortens ``GRACESERVE_GRACE``). Everything is driven with ``podman exec ... systemctl``
and ``curl`` inside the container, on the container's own loopback (``--network none``).

One container serves the whole module; every test starts from stopped units and reads
only the journal written since it began (a journal cursor). Without root, podman or the
image every test is skipped with the reason; with ``GRACESERVE_CONTAINER_TESTS=require``
(CI) they fail instead.

In-flight detection without sleeps: the container's sockets are in the host's
``/proc/PID/net/tcp`` for its init PID. A request is in flight once the listener's accept
queue is empty and the server's end of every connection has read all its bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from graceserve.process.readiness import parse_ready
from testsupport.procfs import ESTABLISHED, LISTEN, tcp_sockets

REPO_ROOT = Path(__file__).resolve().parent.parent
PODMAN_DIR = Path(os.environ.get("GRACESERVE_PODMAN_DIR", "/var/tmp/graceserve-podman"))
CONTAINERS_CONF = PODMAN_DIR / "containers.conf"
IMAGE = "localhost/pyslim-systemd:bookworm"
CONTAINER = "gs-systemd-unit"
UNIT = "graceserve.service"
SOCKET_UNIT = "graceserve.socket"
PORT = 8000  # GRACESERVE_BIND in the shipped unit, ListenStream in the socket unit
BASE_URL = f"http://127.0.0.1:{PORT}"
DROP_IN_DIR = "/run/systemd/system/graceserve.service.d"
PIDFILE = "/run/graceserve/graceserve.pid"  # the shipped unit's --pidfile

COMMAND_TIMEOUT = 60.0  # seconds for one podman command
BOOT_TIMEOUT = 30.0  # seconds for `systemctl is-system-running` to settle
WAIT_TIMEOUT = 15.0  # seconds for anything else we poll for
POLL_PAUSE = 0.05  # pause inside bounded polling loops

# Also "container": `-m "not container"` leaves out every test that runs podman.
pytestmark = [pytest.mark.container, pytest.mark.systemd, pytest.mark.timeout(300)]

SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "venv", ".*_cache", "*.pyc"
)


def _unavailable(reason: str, *, setup_hint: bool = True) -> None:
    """Skip (or fail, when CI requires the container tests) with *reason*."""
    hint = "; run .ci/container-setup and .ci/systemd-setup first"
    message = reason + hint if setup_hint else reason
    if os.environ.get("GRACESERVE_CONTAINER_TESTS") == "require":
        pytest.fail(message)
    pytest.skip(message)


def podman(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` with the setup script's configuration; never raises."""
    env = dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
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


def inside(*argv: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ARGV inside the container; never raises."""
    return podman("exec", CONTAINER, *argv, timeout=timeout)


def inside_ok(*argv: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ARGV inside the container; fail the test unless it exits 0; return stdout."""
    return podman_ok("exec", CONTAINER, *argv, timeout=timeout)


def poll(what: str, check: Callable[[], object], timeout: float = WAIT_TIMEOUT) -> None:
    """Call ``check()`` until it returns true; fail naming *what* after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{journal_all()}")
        time.sleep(POLL_PAUSE)


def journal_all() -> str:
    """The unit's whole journal (for failure messages)."""
    return inside("journalctl", "--no-pager", "-u", UNIT, "-u", SOCKET_UNIT, "-o", "cat").stdout


def _boot() -> None:
    podman_ok(
        "run", "-d", "--name", CONTAINER, "--network", "none", "--privileged",
        "--systemd=always", IMAGE, "/sbin/init",
    )  # fmt: skip
    state = ""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while state not in {"running", "degraded"} and time.monotonic() < deadline:
        state = inside("systemctl", "is-system-running").stdout.strip()
        if state not in {"running", "degraded"}:
            time.sleep(POLL_PAUSE)
    if state == "degraded":
        failed = inside("systemctl", "--failed", "--no-legend", "--plain").stdout
        pytest.fail(f"systemd booted degraded; failed units:\n{failed}")
    assert state == "running", f"systemd did not reach 'running' in {BOOT_TIMEOUT:g} s: {state!r}"


def _install() -> None:
    """Copy this checkout in, pip-install it, add the user and the shipped service unit."""
    with tempfile.TemporaryDirectory(prefix="gs-systemd-src-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(REPO_ROOT, source, ignore=SOURCE_IGNORE)
        podman_ok("cp", str(source), f"{CONTAINER}:/src")
    # The container has no network: setuptools comes from the image (python3-setuptools).
    inside_ok(
        "pip", "install", "-q", "--no-build-isolation", "--no-index", "--no-deps", "/src",
        timeout=180,
    )  # fmt: skip
    inside_ok(
        "useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "graceserve"
    )
    inside_ok("cp", f"/src/examples/{UNIT}", f"/etc/systemd/system/{UNIT}")
    inside_ok("systemctl", "daemon-reload")
    # Enabled, or ExecMainStatus is garbage-collected once the unit stops.
    inside_ok("systemctl", "enable", UNIT)


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    """Boot systemd in a container with graceserve installed; remove it at the end."""
    if shutil.which("podman") is None:
        _unavailable("podman is not installed")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _unavailable("the systemd tests need root (podman runs them as root)", setup_hint=False)
    if not CONTAINERS_CONF.is_file():
        _unavailable(f"{CONTAINERS_CONF} is missing")
    if podman("image", "exists", IMAGE).returncode != 0:
        _unavailable(f"the image {IMAGE} is not present")
    podman("rm", "-f", "-t", "0", CONTAINER)  # left over by a run that was killed
    try:
        _boot()
        _install()
        yield CONTAINER
    finally:
        podman("rm", "-f", "-t", "0", CONTAINER)


@dataclass
class Unit:
    """The service in the container, seen from one test: its journal since the test began."""

    cursor: str
    init_pid: int

    def journal(self) -> str:
        """What the unit and systemd about it logged since this test began."""
        return inside(
            "journalctl", "--no-pager", "-u", UNIT, "-u", SOCKET_UNIT, "-o", "cat",
            "--after-cursor", self.cursor,
        ).stdout  # fmt: skip

    def ready_pids(self) -> list[int]:
        """The pids of the readiness lines logged since this test began, in order."""
        pids = []
        for line in self.journal().splitlines():
            ready = parse_ready(line)
            if ready is not None and ready.pid is not None:
                pids.append(ready.pid)
        return pids

    def wait_journal(self, text: str, count: int = 1) -> str:
        """Poll the journal until *text* appears *count* times; return the journal."""
        seen = ""

        def found() -> bool:
            nonlocal seen
            seen = self.journal()
            return seen.count(text) >= count

        poll(f"{text!r} x{count} in the journal", found)
        return seen

    def show(self, *names: str, unit: str = UNIT) -> dict[str, str]:
        """``systemctl show -p NAME ...`` as a dict."""
        out = inside_ok("systemctl", "show", unit, *(f"--property={name}" for name in names))
        pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
        return {key: value for key, value in pairs}

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def in_flight(self, *requests: Request) -> None:
        """Poll until curl sent each request and the server accepted and read them all.

        curl -v prints the request line (``> GET``) once it is written to the socket,
        i.e. in the server's receive queue (loopback); the server has read it once that
        queue and the listener's accept queue are empty.
        """

        def read() -> bool:
            if not all(request.sent() for request in requests):
                return False
            table = tcp_sockets((f"/proc/{self.init_pid}/net/tcp",))
            backlog = [e for e in table if e.local_port == PORT and e.state == LISTEN]
            served = [e for e in table if e.local_port == PORT and e.state == ESTABLISHED]
            return (
                bool(backlog)
                and backlog[0].unread == 0
                and len(served) >= len(requests)
                and all(e.unread == 0 for e in served)
            )

        poll(f"{len(requests)} request(s) read by the server", read)


@dataclass
class Request:
    """A curl run in the background inside the container; its results go to files."""

    name: str

    @classmethod
    def start(cls, name: str, path: str) -> Request:
        files = f"/tmp/gs-{name}"
        # When the transfer ended, by curl's own clock (time_total) from an instant taken
        # just before curl runs: how late curl's process exits on a loaded machine does
        # not move it (the exit's own time used to, by a millisecond, once).
        script = (
            f"rm -f {files}.*; started=$(date +%s.%N); "
            f"curl -v -sS --max-time 60 -o {files}.body -w '%{{http_code}} %{{time_total}}' "
            f"'{BASE_URL}{path}' >{files}.code 2>{files}.err; "
            f'echo "$? $started" >{files}.tmp; mv {files}.tmp {files}.rc'
        )
        podman_ok("exec", "-d", CONTAINER, "sh", "-c", script)
        return cls(name)

    def sent(self) -> bool:
        """Whether curl has written the request (its verbose log shows the request line)."""
        return "> GET " in inside("cat", f"/tmp/gs-{self.name}.err").stdout

    def finished(self) -> bool:
        """Whether curl has ended."""
        return inside("test", "-e", f"/tmp/gs-{self.name}.rc").returncode == 0

    def result(self, timeout: float = 40.0) -> Outcome:
        """Wait for curl to end and return what it got."""
        files = f"/tmp/gs-{self.name}"
        poll(f"curl {self.name} to finish", self.finished, timeout=timeout)
        rc, started = inside_ok("cat", f"{files}.rc").split()
        err = "".join(inside_ok("cat", f"{files}.err").splitlines(keepends=True)[-5:])
        status, _, took = inside_ok("cat", f"{files}.code").strip().partition(" ")
        return Outcome(int(rc), status, err, float(started) + float(took or 0))


@dataclass
class Outcome:
    """How a background curl ended: its exit code, the HTTP status ('000': none), the end
    of its stderr, and when its transfer ended (the container's clock, seconds since the
    epoch)."""

    rc: int
    status: str
    err: str
    ended: float

    @property
    def ok(self) -> bool:
        """A complete 200 response."""
        return (self.rc, self.status) == (0, "200")


def curl(path: str) -> str:
    """GET *path* inside the container now; return the HTTP status ('000': no answer)."""
    result = inside("curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                    BASE_URL + path)  # fmt: skip
    return result.stdout.strip()


@pytest.fixture
def unit(container: str) -> Iterator[Unit]:
    """Stopped units and a journal cursor; everything stopped and reset again afterwards."""

    # One exec: stop both units, drop what a test added (then daemon-reload), and
    # forget failures, so the next test starts from the module's clean state.
    reset = (
        f"systemctl stop {SOCKET_UNIT} {UNIT}; "
        f"if [ -e {DROP_IN_DIR} ] || [ -e /etc/systemd/system/{SOCKET_UNIT} ]; then "
        f"rm -rf {DROP_IN_DIR} /etc/systemd/system/{SOCKET_UNIT}; systemctl daemon-reload; fi; "
        "systemctl reset-failed"
    )
    cursor = ""
    for line in inside_ok("journalctl", "--show-cursor", "-n", "0", "-q").splitlines():
        if line.startswith("-- cursor: "):
            cursor = line.removeprefix("-- cursor: ").strip()
    assert cursor, "journalctl gave no cursor"
    init_pid = int(podman_ok("inspect", "--format", "{{.State.Pid}}", CONTAINER).strip())
    try:
        yield Unit(cursor, init_pid)
    finally:
        inside("sh", "-c", reset, timeout=90)


@dataclass
class Stop:
    """A ``systemctl stop``: its exit code, how long it took, and when it returned."""

    rc: int
    elapsed: float
    returned: float  # the container's clock, seconds since the epoch


def stop_service() -> Stop:
    """Run ``systemctl stop`` (it returns once the unit is inactive)."""
    script = f'systemctl stop {UNIT}; echo "$? $(date +%s.%N)"'
    start = time.monotonic()
    out = inside_ok("sh", "-c", script).split()
    return Stop(int(out[-2]), time.monotonic() - start, float(out[-1]))


def start_service(unit: Unit) -> int:
    """``systemctl start`` (Type=notify: returns once READY=1); return the main pid."""
    result = inside("systemctl", "start", UNIT)
    assert result.returncode == 0, f"{result.stderr}\n{unit.journal()}"
    pid = unit.main_pid()
    assert pid > 0
    return pid


def assert_stopped_cleanly(unit: Unit, exit_status: str) -> str:
    """The stop is over: the status systemd recorded, Result=success, no SIGKILL."""
    journal = unit.wait_journal("Stopped graceserve")
    props = unit.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert props["ActiveState"] == "inactive", (props, journal)
    assert props["ExecMainStatus"] == exit_status, (props, journal)
    assert props["Result"] == "success", (props, journal)
    assert "SIGKILL" not in journal, journal
    return journal


# --- tests -------------------------------------------------------------------------------


def test_start_reports_address_in_status(unit: Unit) -> None:
    pid = start_service(unit)
    props = unit.show("ActiveState", "SubState", "StatusText")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert f"listening on {BASE_URL}" in props["StatusText"], props
    assert len(unit.ready_pids()) == 1, unit.journal()
    assert inside_ok("cat", "/run/graceserve/graceserve.pid").strip() == str(pid)
    assert curl("/healthz") == "200"


def test_stop_drains_request_in_flight(unit: Unit) -> None:
    start_service(unit)
    request = Request.start("stop", "/slow?seconds=3")
    unit.in_flight(request)
    stop = stop_service()
    assert stop.rc == 0

    got = request.result()
    assert got.ok, (got, unit.journal())
    # systemctl stop waited for the drain: the answer came before it returned.
    assert got.ended <= stop.returned, (got, stop)
    assert_stopped_cleanly(unit, "0")


def test_grace_cut_exits_4_and_unit_succeeds(unit: Unit) -> None:
    # A runtime drop-in shortens the shipped grace (20 s) to 2 s; nothing else changes.
    inside_ok("mkdir", "-p", DROP_IN_DIR)
    inside_ok("sh", "-c", f"printf '[Service]\\nEnvironment=GRACESERVE_GRACE=2\\n' "
                          f">{DROP_IN_DIR}/50-test-grace.conf")  # fmt: skip
    inside_ok("systemctl", "daemon-reload")
    start_service(unit)
    request = Request.start("cut", "/slow?seconds=30")
    unit.in_flight(request)
    stop = stop_service()
    assert stop.rc == 0

    got = request.result()
    assert got.status != "200", "the request outlasting the grace was answered"
    assert got.rc != 0, f"curl did not see the connection cut: {got}"
    # Cut by graceserve at its grace (2 s), long before TimeoutStopSec (30 s).
    assert 1.5 < stop.elapsed < 20, stop
    assert_stopped_cleanly(unit, "4")


def test_reload_with_request_in_flight(unit: Unit) -> None:
    start_service(unit)
    request = Request.start("reload", "/slow?seconds=3")
    unit.in_flight(request)
    reload = inside("systemctl", "reload", UNIT)
    assert reload.returncode == 0, reload.stderr
    # ExecReload (graceserve ctl graceful) returned only once the new generation served.
    status = ctl_status()
    assert (status["generation"], status["state"]) == (2, "serving"), status
    poll("a second readiness line", lambda: len(unit.ready_pids()) >= 2)
    assert curl("/healthz") == "200"

    got = request.result()
    assert got.ok, (got, unit.journal())
    pids = unit.ready_pids()
    assert len(pids) == 2, (pids, unit.journal())  # a new process serves
    assert pids[0] != pids[1], pids
    assert unit.show("ActiveState")["ActiveState"] == "active"


def test_two_reloads_then_stop_drains_request_in_flight(unit: Unit) -> None:
    start_service(unit)
    for generation in (2, 3):
        reload = inside("systemctl", "reload", UNIT)
        assert reload.returncode == 0, reload.stderr
        poll(
            f"generation {generation} ready",
            lambda g=generation: len(unit.ready_pids()) >= g,  # type: ignore[misc]
        )
    assert curl("/healthz") == "200"
    request = Request.start("reloads-stop", "/slow?seconds=3")
    unit.in_flight(request)
    stop = stop_service()
    assert stop.rc == 0

    got = request.result()
    journal = unit.journal()
    assert got.ok, (got, stop, journal)
    assert got.ended <= stop.returned, (got, stop, journal)
    assert_stopped_cleanly(unit, "0")


def test_workers_2_reload_then_stop_drains_request_in_flight(unit: Unit) -> None:
    """GRACESERVE_WORKERS=2 (a drop-in): READY=1 once both workers are ready, a reload
    keeps MAINPID (the supervisor), and the stop drains a request in flight."""
    inside_ok("mkdir", "-p", DROP_IN_DIR)
    inside_ok("sh", "-c", f"printf '[Service]\\nEnvironment=GRACESERVE_WORKERS=2\\n' "
                          f">{DROP_IN_DIR}/50-test-workers.conf")  # fmt: skip
    inside_ok("systemctl", "daemon-reload")
    main = start_service(unit)
    assert "2 workers ready" in unit.journal()
    reload = inside("systemctl", "reload", UNIT)
    assert reload.returncode == 0, (reload.stderr, unit.journal())
    assert unit.main_pid() == main  # the supervisor stays systemd's main process
    assert curl("/healthz") == "200"
    request = Request.start("workers-stop", "/slow?seconds=3")
    unit.in_flight(request)
    stop = stop_service()
    assert stop.rc == 0

    got = request.result()
    journal = unit.journal()
    assert got.ok, (got, stop, journal)
    assert got.ended <= stop.returned, (got, stop, journal)
    assert_stopped_cleanly(unit, "0")


BROKEN_MARK = "this deploy cannot import"
BROKEN = f"raise ImportError('gs-systemd test: {BROKEN_MARK}')\n"


@pytest.fixture
def broken_deploy(unit: Unit) -> Iterator[Unit]:
    """A started service whose installed code no longer imports (restored afterwards)."""
    start_service(unit)
    demo = inside_ok("python3", "-c", "import graceserve.demo as m; print(m.__file__)").strip()
    inside_ok("cp", demo, "/tmp/gs-demo.py.orig")
    try:
        inside_ok("sh", "-c", f'printf %s "{BROKEN}" >>{demo}')
        yield unit
    finally:
        inside_ok("cp", "/tmp/gs-demo.py.orig", demo)


def test_reload_of_broken_code_keeps_old_generation_serving(broken_deploy: Unit) -> None:
    unit = broken_deploy
    old = unit.main_pid()
    request = Request.start("broken", "/slow?seconds=2")
    unit.in_flight(request)
    inside("systemctl", "reload", UNIT)
    # The new process reports why it could not start; the old one says it still serves.
    unit.wait_journal(BROKEN_MARK)

    def reported() -> bool:
        return "fail" in unit.journal().split(BROKEN_MARK, 1)[1].lower()

    poll("a log line, after the new process's error, saying the reload failed", reported)

    assert unit.main_pid() == old
    assert len(unit.ready_pids()) == 1, unit.journal()  # no new process serves
    assert curl("/healthz") == "200"
    got = request.result()
    assert got.ok, (got, unit.journal())
    assert unit.show("ActiveState")["ActiveState"] == "active"


def test_reload_of_broken_code_fails_systemctl_reload(broken_deploy: Unit) -> None:
    result = inside("systemctl", "reload", UNIT)
    assert result.returncode != 0, f"systemctl reload succeeded:\n{broken_deploy.journal()}"
    broken_deploy.wait_journal("graceserve ctl graceful: reload failed: pid")  # with the reason
    status = ctl_status()
    assert (status["generation"], status["state"]) == (1, "serving"), status
    assert broken_deploy.show("ActiveState")["ActiveState"] == "active"
    assert curl("/healthz") == "200"


def ctl_status() -> dict[str, object]:
    """``graceserve ctl status --json`` inside the container (as root)."""
    out = inside_ok("python3", "-m", "graceserve", "ctl", "status", "--json", "--pidfile", PIDFILE)
    status = json.loads(out)
    assert isinstance(status, dict), out
    return status


def start_socket(unit: Unit) -> int:
    """Install and start the shipped socket unit; connect once to start the service."""
    inside_ok("cp", f"/src/examples/{SOCKET_UNIT}", f"/etc/systemd/system/{SOCKET_UNIT}")
    inside_ok("systemctl", "daemon-reload")
    inside_ok("systemctl", "start", SOCKET_UNIT)
    assert unit.show("ActiveState", unit=SOCKET_UNIT)["ActiveState"] == "active"
    assert unit.show("ActiveState")["ActiveState"] == "inactive"
    assert curl("/healthz") == "200", unit.journal()
    return unit.main_pid()


def test_socket_activation_serves_request_made_during_drain(unit: Unit) -> None:
    first = start_socket(unit)
    assert first > 0

    slow = Request.start("sock-slow", "/slow?seconds=5")
    unit.in_flight(slow)
    inside_ok("systemctl", "stop", "--no-block", UNIT)
    poll("the drain (SubState=stop-sigterm)",
         lambda: unit.show("SubState")["SubState"] == "stop-sigterm")  # fmt: skip
    late = Request.start("sock-late", "/healthz")
    poll("the late request to be sent", late.sent)
    assert not slow.finished(), "the drain ended before the late request was sent"

    got_slow = slow.result()
    assert got_slow.ok, (got_slow, unit.journal())
    got_late = late.result()
    assert got_late.ok, (got_late, unit.journal())
    assert got_late.ended >= got_slow.ended, (got_late, got_slow)
    pids = unit.ready_pids()
    assert len(pids) == 2, (pids, unit.journal())  # a second start served the late one
    assert pids[0] != pids[1], pids
    assert unit.main_pid() not in {0, first}, unit.journal()
    # The first generation drained cleanly: systemd logs "Main process exited" only
    # for a non-zero status or a signal.
    journal = unit.journal()
    assert "Deactivated successfully" in journal, journal
    assert "Main process exited" not in journal, journal
    assert "SIGKILL" not in journal, journal


def test_socket_activation_drain_log_tells_the_truth(unit: Unit) -> None:
    start_socket(unit)
    stop = stop_service()
    assert stop.rc == 0
    journal = assert_stopped_cleanly(unit, "0")
    assert "refused" not in journal, journal


# --- reloads meeting other events: a stop, a storm under load ------------------------------

STATE_DIR = "/var/lib/graceserve"  # the unit's WorkingDirectory (StateDirectory)
HOLD = f"{STATE_DIR}/hold"
SLOW_APP = f'''"""gs-systemd test target: the demo, whose import waits while {HOLD} exists."""
import os
import sys
import time

from graceserve.demo import DemoHandler as Handler

if os.path.exists("{HOLD}"):
    print(f"gs-test: pid {{os.getpid()}} holds its import", file=sys.stderr, flush=True)
    give_up = time.monotonic() + 60
    while os.path.exists("{HOLD}") and time.monotonic() < give_up:
        time.sleep(0.02)
'''


def with_drop_in(name: str, *lines: str) -> None:
    """A runtime drop-in for the service (the ``unit`` fixture removes it)."""
    body = "\\n".join(["[Service]", *lines, ""])
    inside_ok("mkdir", "-p", DROP_IN_DIR)
    inside_ok("sh", "-c", f"printf '{body}' >{DROP_IN_DIR}/{name}.conf")
    inside_ok("systemctl", "daemon-reload")


@pytest.fixture
def slow_app(unit: Unit) -> Iterator[Unit]:
    """The service serves ``gs_slow:Handler`` (the demo), whose import a test can hold."""
    inside_ok("mkdir", "-p", STATE_DIR)
    inside_ok("sh", "-c", f"cat >{STATE_DIR}/gs_slow.py <<'EOF'\n{SLOW_APP}EOF")
    with_drop_in("50-test-slow", "Environment=GRACESERVE_TARGET=gs_slow:Handler")
    try:
        yield unit
    finally:
        inside("rm", "-f", HOLD, f"{STATE_DIR}/gs_slow.py")


def test_stop_during_reload_ends_clean_and_the_unit_does_not_fail(slow_app: Unit) -> None:
    """`systemctl stop` while `systemctl reload` (ExecReload: ctl graceful) waits for a new
    generation: systemd signals ctl too; ctl says the server is stopping and exits 0, the
    server abandons the reload and drains: the unit ends inactive, Result=success."""
    unit = slow_app
    start_service(unit)
    inside_ok("touch", HOLD)
    inside_ok("systemctl", "reload", "--no-block", UNIT)
    unit.wait_journal("holds its import")
    assert unit.show("ActiveState")["ActiveState"] == "reloading"
    stop = stop_service()
    assert stop.rc == 0, unit.journal()
    journal = assert_stopped_cleanly(unit, "0")
    assert "graceserve ctl graceful: interrupted by SIGTERM" in journal, journal
    assert "the reload to generation 2 is abandoned" in journal, journal
    assert "reload failed" not in journal, journal
    assert unit.show("NRestarts")["NRestarts"] == "0"


LOAD = """
import http.client, json, sys, threading, time
stop_file, out, clients = sys.argv[1], sys.argv[2], int(sys.argv[3])
counts = {"requests": 0, "failures": []}
lock = threading.Lock()
def client():
    conn = None
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        try:
            open(stop_file).close()
            break
        except OSError:
            pass
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=10)
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read()
            with lock:
                counts["requests"] += 1
                if response.status != 200:
                    counts["failures"].append(f"{response.status} {body[:40]!r}")
            if response.will_close:
                conn.close()
                conn = None
        except Exception as exc:
            with lock:
                counts["failures"].append(repr(exc))
            if conn is not None:
                conn.close()
            conn = None
threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
json.dump(counts, open(out + ".tmp", "w"))
import os
os.rename(out + ".tmp", out)
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_reload_storm_under_load_breaks_nothing_and_never_fails_the_unit(
    unit: Unit, workers: str
) -> None:
    """Keep-alive load inside the container while reloads come from everywhere: ten
    `systemctl reload` in a row, HUP bursts straight to the main process, and reloads
    asked for while others run.  Not one request broken; the unit never fails; every
    `systemctl reload` succeeds; the reloads end with one generation serving."""
    if workers != "1":
        with_drop_in("50-test-workers", f"Environment=GRACESERVE_WORKERS={workers}")
    main = start_service(unit)
    inside_ok("sh", "-c", f"cat >/tmp/gs-load.py <<'EOF'\n{LOAD}EOF")
    inside("rm", "-f", "/tmp/gs-load-stop", "/tmp/gs-load.json")
    podman_ok("exec", "-d", CONTAINER, "python3", "/tmp/gs-load.py", "/tmp/gs-load-stop",
              "/tmp/gs-load.json", "8")  # fmt: skip
    storms = [  # the first one meets a single process's first reload
        # a reload, and HUPs straight to the main process while it starts (paced, or the
        # kernel merges them into one), then another
        f"systemctl reload --no-block {UNIT}; for i in 1 2 3 4 5; do kill -HUP {main}; "
        f"sleep 0.1; done; systemctl reload {UNIT}",
        # two at once (systemd merges them into one job), and a HUP beside them
        f"systemctl reload {UNIT} & kill -HUP {main}; systemctl reload {UNIT}; r=$?; "
        "wait $! && exit $r",
        f"systemctl reload {UNIT}",
    ]
    try:
        for round_ in range(10):
            reload = inside("sh", "-c", storms[round_ % 3])
            assert reload.returncode == 0, (reload.stderr, unit.journal())
            props = unit.show("ActiveState", "MainPID")
            assert props == {"ActiveState": "active", "MainPID": str(main)}, props
    finally:
        inside_ok("touch", "/tmp/gs-load-stop")
    poll("the load to end", lambda: inside("test", "-e", "/tmp/gs-load.json").returncode == 0,
         timeout=60)  # fmt: skip
    counts = json.loads(inside_ok("cat", "/tmp/gs-load.json"))
    journal = unit.journal()
    assert counts["failures"] == [], (counts["failures"][:5], journal)
    assert counts["requests"] > 100, counts
    status: dict[str, Any] = ctl_status()
    assert status["state"] == "serving", status
    assert status["reloads"] >= 10, status
    assert all(entry["ok"] for entry in status.get("recent_reloads", [])), status
    assert not re.search(r"(reload|restart) failed", journal), journal
    assert unit.show("NRestarts", "Result") == {"NRestarts": "0", "Result": "success"}
    stop = stop_service()
    assert stop.rc == 0
    assert_stopped_cleanly(unit, "0")
