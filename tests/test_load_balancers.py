"""Behind HAProxy and nginx: rolling restarts and reloads of three replicas, zero failures.

The real HAProxy and nginx (Debian's packages) run ``examples/haproxy.cfg`` and
``examples/nginx.conf`` themselves, only their addresses and paths substituted,
in front of three graceserve replicas serving ``examples/wsgi_app.py`` with the
flags each example's header documents.  Client threads keep GETs and POSTs
with bodies going through the balancer the whole time while, one replica at a
time, the test

1. sends TERM, waits for exit code 0, starts the replica again on the same
   port and waits until the balancer sends it requests again (HAProxy: until
   its health check has the replica DOWN during the lame duck, then UP again);
2. then sends HUP to each replica in turn and waits until its new worker
   serves and the balancer's requests reach it.

Every client request must succeed (status 200, the body of a POST echoed back),
and every replica must have served, after its own restart and reload too.

Ports: HAProxy's front end is a socket this test binds (port 0) and hands over
as ``fd@N``; nginx's is a Unix socket.  A replica must come back on the port it
had, so its ports are chosen below the kernel's ephemeral range (no outgoing
connection or port-0 listener of another test can take them while the replica
restarts), and a taken one is replaced by another before the run.  Marked
``load``: about 25 s per balancer.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import random
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testsupport.process import REPO, ChildProcess, ServerProcess

pytestmark = [pytest.mark.load, pytest.mark.timeout(240)]

APP = "examples.wsgi_app:app"
SERVERS = ("web1", "web2", "web3")
CLIENTS = 6
MAX_BODY = 8000  # within HAProxy's tune.bufsize and nginx's client_body_buffer_size
IO_TIMEOUT = 30.0
STATE_TIMEOUT = 30.0  # seconds for a balancer to take a replica in or out of rotation
OCTETS = {"Content-Type": "application/octet-stream"}


def substituted(example: str, changes: dict[str, str]) -> str:
    """``examples/EXAMPLE`` with each ``old`` (found exactly once) replaced by ``new``."""
    text = (REPO / "examples" / example).read_text()
    for old, new in changes.items():
        assert text.count(old) == 1, f"examples/{example} no longer has exactly one {old!r}"
        text = text.replace(old, new)
    return text


def pause(seconds: float) -> None:
    """A poll's pace (never a synchronisation: every caller re-checks with a deadline)."""
    threading.Event().wait(seconds)


# -- replicas -----------------------------------------------------------------------------


def candidate_ports() -> list[int]:
    """Ports below the ephemeral range, in random order (see the module docstring)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = list(range(max(10000, low - 12000), low))
    random.shuffle(ports)
    return ports


class Replicas:
    """The three replicas by name, each on its own fixed port."""

    def __init__(self, flags: list[str]) -> None:
        self.flags = flags
        self.servers: dict[str, ServerProcess] = {}
        self.ports: dict[str, int] = {}
        self.retired: list[ServerProcess] = []
        candidates = candidate_ports()
        for name in SERVERS:
            for _attempt in range(20):
                port = candidates.pop()
                server = self._start(port)
                if server.exited_within(0) is None:
                    with contextlib.suppress(AssertionError):
                        server.wait_ready()
                if server.address is not None:
                    self.servers[name], self.ports[name] = server, port
                    break
                server.stop()  # the port was taken: try another
            else:
                pytest.fail("no free port below the ephemeral range after 20 tries")

    def _start(self, port: int) -> ServerProcess:
        return ServerProcess([APP, "--bind", f"127.0.0.1:{port}", *self.flags], cwd=REPO)

    def restart(self, name: str) -> ServerProcess:
        self.retired.append(self.servers[name])
        server = self.servers[name] = self._start(self.ports[name])
        server.wait_ready()
        return server

    def name_of_port(self, port: int) -> str:
        return next((name for name, p in self.ports.items() if p == port), "")

    def stop(self) -> None:
        for server in [*self.servers.values(), *self.retired]:
            server.stop()


# -- load -----------------------------------------------------------------------------------


class Load:
    """Client threads sending GET / and POST /echo through a balancer until stopped.

    ``connect()`` makes a client connection; ``served_by(response)`` names the
    replica that answered.  ``phase`` is bumped by the test at each step; every
    success is counted by (phase, replica); every failure is kept.  Thread-safe.
    """

    def __init__(
        self,
        connect: Callable[[], http.client.HTTPConnection],
        served_by: Callable[[http.client.HTTPResponse], str],
    ) -> None:
        self.connect = connect
        self.served_by = served_by
        self.phase = 0
        self.served: collections.Counter[tuple[int, str]] = collections.Counter()
        self.posts = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [
            threading.Thread(target=self._client, args=(i,), name=f"lb-client-{i}", daemon=True)
            for i in range(CLIENTS)
        ]
        for thread in self.threads:
            thread.start()

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        conn = self.connect()
        try:
            while not self.done.is_set():
                phase = self.phase
                post = rng.random() < 0.5
                body = rng.randbytes(rng.randint(0, MAX_BODY)) if post else b""
                try:
                    if post:
                        conn.request("POST", "/echo", body=body, headers=OCTETS)
                    else:
                        conn.request("GET", "/")
                    response = conn.getresponse()
                    data = response.read()
                    who = self.served_by(response)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # a fresh connection for the next request
                    self._fail(f"phase {phase}: {'POST' if post else 'GET'}: {exc!r}")
                    continue
                if response.status != 200 or (post and data != body) or who not in SERVERS:
                    self._fail(f"phase {phase}: {response.status} from {who!r}: {data[:200]!r}")
                    continue
                with self.lock:
                    self.served[(phase, who)] += 1
                    self.posts += post
                self.done.wait(0.005)  # pacing: the machine is shared
        finally:
            conn.close()

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def next_phase(self) -> int:
        self.phase += 1
        return self.phase

    def count(self, since: int, who: str) -> int:
        with self.lock:
            return sum(
                n for (phase, name), n in self.served.items() if name == who and phase >= since
            )

    def wait_served(self, since: int, who: str) -> None:
        """Wait until ``who`` has served a client request in phase ``since`` or later."""
        deadline = time.monotonic() + STATE_TIMEOUT
        while self.count(since, who) == 0:
            if time.monotonic() > deadline:
                pytest.fail(f"{who} served nothing since phase {since}: {dict(self.served)}")
            pause(0.05)

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(IO_TIMEOUT + 5)


# -- the balancers ----------------------------------------------------------------------------


class Balancer:
    """A running balancer in front of ``replicas``: how to reach it and what it thinks."""

    process: ChildProcess

    def connect(self) -> http.client.HTTPConnection:
        raise NotImplementedError

    def served_by(self, response: http.client.HTTPResponse) -> str:
        return response.getheader("X-Served-By", "")

    def wait_in_rotation(self, name: str) -> None:
        """Wait until the balancer routes to ``name`` (by its own account, where it has one)."""

    def wait_out_of_rotation(self, name: str) -> None:
        """Wait until the balancer stopped routing to ``name`` (where it can tell)."""

    def close(self) -> None:
        self.process.stop()


class HAProxy(Balancer):
    """``examples/haproxy.cfg``: front end ``fd@N``, state read from its stats socket."""

    def __init__(self, tmp_path: Path, replicas: Replicas) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.front.bind(("127.0.0.1", 0))
        self.front.listen(128)
        self.stats = tmp_path / "haproxy.sock"
        config = tmp_path / "haproxy.cfg"
        config.write_text(substituted("haproxy.cfg", {
            "bind 127.0.0.1:8080": f"bind fd@{self.front.fileno()}",
            "/run/haproxy/graceserve.sock": str(self.stats),
            **{f"{name} 127.0.0.1:{8001 + i}": f"{name} 127.0.0.1:{replicas.ports[name]}"
               for i, name in enumerate(SERVERS)},
        }))  # fmt: skip
        self.process = ChildProcess(
            [str(shutil.which("haproxy")), "-db", "-f", str(config)],
            env=dict(os.environ), pass_fds=[self.front.fileno()],
        )  # fmt: skip
        for name in SERVERS:
            self.wait_in_rotation(name)

    def connect(self) -> http.client.HTTPConnection:
        host, port = self.front.getsockname()
        return http.client.HTTPConnection(host, port, timeout=IO_TIMEOUT)

    def states(self) -> dict[str, str]:
        """``show stat``: each backend server's status (UP, DOWN, ...); {} before it answers."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(IO_TIMEOUT)
                sock.connect(str(self.stats))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except (FileNotFoundError, ConnectionRefusedError):
            return {}
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "graceserve" and row.get("svname") in SERVERS:
                states[row["svname"]] = row["status"]
        return states

    def _wait_state(self, name: str, wanted: str) -> None:
        deadline = time.monotonic() + STATE_TIMEOUT
        while (state := self.states().get(name)) != wanted:
            if time.monotonic() > deadline or self.process.proc.poll() is not None:
                pytest.fail(f"{name} is {state}, not {wanted}; haproxy:\n{self.process.output}")
            pause(0.1)

    def wait_in_rotation(self, name: str) -> None:
        self._wait_state(name, "UP")

    def wait_out_of_rotation(self, name: str) -> None:
        self._wait_state(name, "DOWN")  # its /healthz failed: the lame duck works

    def close(self) -> None:
        super().close()
        self.front.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=IO_TIMEOUT)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Nginx(Balancer):
    """``examples/nginx.conf``: front end on a Unix socket; X-Served-By names the port."""

    def __init__(self, tmp_path: Path, replicas: Replicas) -> None:
        self.replicas = replicas
        self.front = str(tmp_path / "nginx.sock")
        config = tmp_path / "nginx.conf"
        config.write_text(substituted("nginx.conf", {
            "listen 127.0.0.1:8080;": f"listen unix:{self.front};",
            **{f"server 127.0.0.1:{8001 + i} ": f"server 127.0.0.1:{replicas.ports[name]} "
               for i, name in enumerate(SERVERS)},
        }))  # fmt: skip
        # As root nginx runs its worker as nobody, who cannot enter pytest's tmp_path.
        self.process = ChildProcess(
            [str(shutil.which("nginx")), "-p", str(tmp_path), "-c", str(config),
             "-g", "user root root;"],
            env=dict(os.environ),
        )  # fmt: skip
        deadline = time.monotonic() + STATE_TIMEOUT
        while not os.path.exists(self.front):
            if time.monotonic() > deadline or self.process.proc.poll() is not None:
                pytest.fail(f"nginx did not start:\n{self.process.output}")
            pause(0.05)

    def connect(self) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self.front)

    def served_by(self, response: http.client.HTTPResponse) -> str:
        # "127.0.0.1:P" or, after a retry, "127.0.0.1:P1, 127.0.0.1:P2": the last answered.
        last = response.getheader("X-Served-By", "").split(",")[-1].strip()
        port = last.rpartition(":")[2]
        return self.replicas.name_of_port(int(port)) if port.isdigit() else ""


# -- the test -------------------------------------------------------------------------------

CASES = {
    # name: (executable, the replica flags the example documents, Balancer)
    "haproxy": ("haproxy", ["--drain-delay", "3", "--grace", "20"], HAProxy),
    "nginx": ("nginx", ["--grace", "20"], Nginx),
}


@pytest.fixture(params=sorted(CASES))
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Balancer, Replicas]]:
    executable, flags, kind = CASES[request.param]
    if shutil.which(executable) is None:
        pytest.skip(f"needs {executable} (apt-get install {executable}; .ci/run installs it)")
    replicas = Replicas(flags)
    balancer: Balancer | None = None
    try:
        balancer = kind(tmp_path, replicas)
        yield balancer, replicas
    finally:
        if balancer is not None:
            balancer.close()
        replicas.stop()


def test_rolling_restart_and_reload_fail_no_request(setup: tuple[Balancer, Replicas]) -> None:
    balancer, replicas = setup
    load = Load(balancer.connect, balancer.served_by)
    try:
        for name in SERVERS:
            load.wait_served(0, name)

        # 1. Rolling restart: TERM, exit 0, start again on the same port, in rotation again.
        for name in SERVERS:
            old = replicas.servers[name]
            old.send(signal.SIGTERM)
            if "--drain-delay" in replicas.flags:
                old.wait_for_line(r"SIGTERM: lame duck for")
                balancer.wait_out_of_rotation(name)
            assert old.wait_exit(timeout=40) == 0, old.output
            assert re.search(r"stopped: \d+ served during the drain, 0 cut", old.output), old.output
            phase = load.next_phase()
            replicas.restart(name)
            balancer.wait_in_rotation(name)
            load.wait_served(phase, name)

        # 2. Rolling reload: HUP, the new worker serves, the old one drains.
        for name in SERVERS:
            server = replicas.servers[name]
            server.send(signal.SIGHUP)
            server.wait_for_line(r"HUP: generation 2 is ready", timeout=40)
            phase = load.next_phase()
            balancer.wait_in_rotation(name)
            load.wait_served(phase, name)
        load.stop()

        assert load.failures == [], load.failures[:20]
        assert load.posts > 50, dict(load.served)
        for name, server in replicas.servers.items():
            assert load.count(0, name) > 10, dict(load.served)
            server.send(signal.SIGTERM)
            assert server.wait_exit(timeout=40) == 0, f"{name}:\n{server.output}"
    finally:
        load.stop()
