"""systemd's protocols: socket activation (LISTEN_FDS) and readiness notification (sd_notify).

Unit tests of ``graceserve.process.systemd`` first, then end to end: a test that plays
systemd binds the listening socket itself and passes it as fd 3, or binds a Unix
datagram socket and names it in ``NOTIFY_SOCKET``.  The fake supervisor asks for
the sender's credentials (``SO_PASSCRED``), so every message it gets says which
process sent it: after a graceful restart, the old process must announce the new
main pid, and from then on only the new one speaks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from graceserve.process.systemd import LISTEN_FDS_START, Notifier, inherited_listeners
from testsupport.process import REPO, ServerProcess
from testsupport.restarts import (
    APP,
    BROKEN_APP,
    IO_TIMEOUT,
    address_of,
    finish_post,
    first_exit,
    get,
    post_in_flight,
    short_directory,
    unix_get,
    wait_gone,
)

StartServer = Callable[..., ServerProcess]

_UCRED = struct.Struct("iII")  # pid, uid, gid
GRACE = 30  # seconds: far longer than any drain here, so the deadline never decides
# sh between the test and the server: fd 1 (the socket the test passed as stdout)
# becomes fd 3, stdout goes to /dev/null, and LISTEN_PID names the server's own pid.
ACTIVATE = (
    'exec 3>&1 1>/dev/null; LISTEN_PID=$$; LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec "$@"'
)
PASS_FD_3 = 'exec 3>&1 1>/dev/null; exec "$@"'  # fd 3 as above; LISTEN_* from the environment
STDIN_TO_FD_3 = 'exec 3<&0 0</dev/null; exec "$@"'


# -- a fake systemd ----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One sd_notify datagram: who sent it and its ``KEY=VALUE`` fields."""

    pid: int
    fields: tuple[str, ...]

    def get(self, key: str) -> str | None:
        for item in self.fields:
            name, _, value = item.partition("=")
            if name == key:
                return value
        return None

    def has(self, item: str) -> bool:
        return item in self.fields


class Supervisor:
    """A Unix datagram socket standing in for systemd's notify socket.  Test thread only."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it: a path, or "@name"
        self.messages: list[Message] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        except BaseException:
            self.sock.close()
            raise

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None if none arrives within ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.0))  # 0: do not wait at all
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(
                65536, socket.CMSG_SPACE(_UCRED.size)
            )
        except (TimeoutError, BlockingIOError):
            return None
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        message = Message(pid, tuple(data.decode().split("\n")))
        self.messages.append(message)
        return message

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 15.0) -> Message:
        """Receive until a message satisfies ``predicate``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            message = self.receive(remaining) if remaining > 0 else None
            if message is None:
                pytest.fail(f"no such sd_notify message; got: {self.messages}")
            if predicate(message):
                return message

    def fields_since(self, message: Message) -> list[str]:
        """The fields of ``message`` and of every message after it, in order.

        How the sender batches fields into datagrams is its own business.
        """
        start = next(i for i, m in enumerate(self.messages) if m is message)
        return [item for later in self.messages[start:] for item in later.fields]

    def collect(self) -> list[Message]:
        """Receive whatever is queued now, without waiting; every message so far."""
        while self.receive(0) is not None:
            pass
        return self.messages

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)


def abstract_name() -> str:
    return f"@graceserve-test-{os.getpid()}-{secrets.token_hex(6)}"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    yield from short_directory()


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    """A fake systemd on an abstract socket; pass ``NOTIFY_SOCKET=supervisor.address``."""
    fake = Supervisor(abstract_name())
    yield fake
    fake.close()


# -- Notifier ----------------------------------------------------------------------------


def test_notifier_sends_fields_as_lines_to_an_abstract_address(supervisor: Supervisor) -> None:
    notifier = Notifier(supervisor.address)
    try:
        assert notifier.enabled
        notifier.send("READY=1", "STATUS=listening")
    finally:
        notifier.close()
    message = supervisor.receive(IO_TIMEOUT)
    assert message == Message(os.getpid(), ("READY=1", "STATUS=listening"))


def test_notifier_sends_to_a_filesystem_socket(short_dir: Path) -> None:
    fake = Supervisor(str(short_dir / "notify"))
    notifier = Notifier(fake.address)
    try:
        notifier.send("STOPPING=1")
        assert fake.receive(IO_TIMEOUT) == Message(os.getpid(), ("STOPPING=1",))
    finally:
        notifier.close()
        fake.close()


@pytest.mark.parametrize("where", ["abstract", "missing", "regular file", "closed"])
def test_notifier_send_never_raises_when_nobody_listens(short_dir: Path, where: str) -> None:
    address = {
        "abstract": abstract_name(),
        "missing": str(short_dir / "missing"),
        "regular file": str(short_dir / "file"),
        "closed": str(short_dir / "closed"),
    }[where]
    if where == "regular file":
        Path(address).write_text("not a socket")
    elif where == "closed":
        Supervisor(address).sock.close()  # bound, then gone: the file stays, nobody reads
    notifier = Notifier(address)
    try:
        assert notifier.enabled
        notifier.send("READY=1")
        notifier.send("STOPPING=1", "STATUS=draining 0 connections")
    finally:
        notifier.close()


@pytest.mark.parametrize("address", [None, ""])
def test_notifier_without_an_address_sends_nothing(address: str | None) -> None:
    notifier = Notifier(address)
    assert not notifier.enabled
    notifier.send("READY=1")
    notifier.close()


def test_notifier_from_environment_consumes_notify_socket() -> None:
    environ: MutableMapping[str, str] = {"NOTIFY_SOCKET": "@somewhere", "OTHER": "kept"}
    notifier = Notifier.from_environment(environ)
    try:
        assert (notifier.address, notifier.enabled) == ("@somewhere", True)
        assert environ == {"OTHER": "kept"}  # children do not inherit it
    finally:
        notifier.close()
    empty = Notifier.from_environment({})
    assert not empty.enabled
    empty.close()


def test_notifier_close_is_idempotent_and_later_sends_are_dropped(
    supervisor: Supervisor,
) -> None:
    notifier = Notifier(supervisor.address)
    notifier.close()
    notifier.close()
    assert not notifier.enabled
    notifier.send("READY=1")
    assert supervisor.receive(0) is None


def test_notifier_never_blocks_when_the_supervisor_stops_reading(
    supervisor: Supervisor,
) -> None:
    """A supervisor that does not read must not stall the controller (and the grace deadline).

    The kernel queues only a few datagrams per Unix socket (net.unix.max_dgram_qlen),
    then a blocking sender sleeps until the reader reads.
    """
    notifier = Notifier(supervisor.address)
    sent = threading.Event()

    def send_many() -> None:
        for count in range(200):
            notifier.send(f"STATUS=draining: {count} connections remaining")
        sent.set()

    sender = threading.Thread(target=send_many, name="test-notify-sender", daemon=True)
    sender.start()
    try:
        finished = sent.wait(3.0)  # 200 sends that never wait take well under a second
    finally:
        supervisor.close()  # wakes a blocked sender: its sends fail (and are dropped) from now on
        sender.join(IO_TIMEOUT)
        notifier.close()
    assert finished, "Notifier.send() blocked while the supervisor's queue was full"


# -- inherited_listeners -----------------------------------------------------------------


def adopted(environ: MutableMapping[str, str]) -> list[socket.socket]:
    """``inherited_listeners(environ)``, never closing whatever this process has at fd 3."""
    sockets = inherited_listeners(environ)
    for sock in sockets:
        sock.detach()  # fd 3 is not ours to close in the test process
    return sockets


def test_inherited_listeners_without_variables_are_none() -> None:
    environ: MutableMapping[str, str] = {"OTHER": "kept"}
    assert adopted(environ) == []
    assert environ == {"OTHER": "kept"}


def test_inherited_listeners_for_another_pid_are_none_and_consume_the_variables() -> None:
    environ: MutableMapping[str, str] = {
        "LISTEN_PID": str(os.getpid() + 1),
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "web",
        "OTHER": "kept",
    }
    assert adopted(environ) == []
    assert environ == {"OTHER": "kept"}


@pytest.mark.parametrize("count", ["0", "", "x", "-1", " 1"])
def test_inherited_listeners_without_a_usable_count_are_none(count: str) -> None:
    environ: MutableMapping[str, str] = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": count}
    assert adopted(environ) == []
    assert environ == {}


CHILD = """
import json, os, sys
from graceserve.errors import StartupError
from graceserve.process.systemd import inherited_listeners
environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": sys.argv[1], "LISTEN_FDNAMES": "a:b"}
try:
    sockets = inherited_listeners(environ)
except StartupError as exc:
    print(json.dumps({"error": str(exc)}))
    raise SystemExit(0)
print(json.dumps([{
    "fileno": sock.fileno(),
    "address": list(sock.getsockname()),
    "type": int(sock.type),
    "inheritable": sock.get_inheritable(),
    "environ": environ,
} for sock in sockets]))
"""
# fd 0 (the test's first listener) becomes 3, fd 1 (its second, or nothing) becomes 4.
STDIO_TO_FDS_3_4 = 'exec 3<&0 4>&1 0</dev/null 1>&2; exec "$@"'


def adopt_in_child(count: str, *listeners: socket.socket) -> object:
    """What a child whose fds 3 (and 4) are ``listeners`` adopts with ``LISTEN_FDS=count``."""
    second = listeners[1].fileno() if len(listeners) > 1 else subprocess.DEVNULL
    child = subprocess.run(
        ["sh", "-c", STDIO_TO_FDS_3_4, "sh", sys.executable, "-c", CHILD, count],
        stdin=listeners[0].fileno(),
        stdout=second,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
        check=False,
    )
    assert child.returncode == 0, child.stderr.decode()
    lines = child.stderr.decode().splitlines()  # the child's stdout went to its stderr
    return json.loads(lines[-1])


@pytest.mark.slow
def test_inherited_listeners_adopt_fd_3_of_their_own_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert adopt_in_child("1", listener) == [
            {
                "fileno": LISTEN_FDS_START,
                "address": list(listener.getsockname()),
                "type": int(socket.SOCK_STREAM),
                "inheritable": False,  # not passed on to its own children
                "environ": {},  # consumed
            }
        ]


@pytest.mark.slow
def test_inherited_listeners_adopt_every_fd_listen_fds_names() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as first,
        socket.create_server(("127.0.0.1", 0)) as second,
    ):
        adopted = adopt_in_child("2", first, second)
        assert isinstance(adopted, list)
        assert [(entry["fileno"], entry["address"]) for entry in adopted] == [
            (LISTEN_FDS_START, list(first.getsockname())),
            (LISTEN_FDS_START + 1, list(second.getsockname())),
        ]


@pytest.mark.slow
def test_a_listen_fds_descriptor_that_is_not_a_socket_is_a_startup_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        adopted = adopt_in_child("2", listener)  # fd 4 is /dev/null
    assert isinstance(adopted, dict)
    assert "socket activation: fd 4 of LISTEN_FDS=2 is not a socket" in adopted["error"]


# -- socket activation, end to end -------------------------------------------------------


def activated(
    start: StartServer, listener: socket.socket, *args: str, **kwargs: object
) -> ServerProcess:
    """Start ``python -m graceserve`` with ``listener`` as its fd 3, through the ``ACTIVATE`` sh.

    ServerProcess closes every descriptor above 2, so the socket travels as the
    child's stdout and sh moves it to 3.  Our copy is closed once the child has its own.
    """
    server = start(
        list(args), prefix=["sh", "-c", ACTIVATE, "sh"], stdout=listener.fileno(), **kwargs
    )
    listener.close()
    return server


def test_socket_activation_serves_on_the_inherited_socket(start_server: StartServer) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # --bind names the very port the inherited socket holds: binding it would fail.
    server = activated(start_server, listener, "--bind", f"127.0.0.1:{port}", "--grace", "5")
    assert server.wait_ready() == ("127.0.0.1", port)
    assert get(address_of(server), "/")[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    with pytest.raises(ConnectionRefusedError):  # it was the only holder of the socket
        socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT).close()


@pytest.mark.slow
@pytest.mark.parametrize("restarted", [False, True], ids=["first", "after-restart"])
def test_socket_activation_leaves_the_listener_in_service_for_systemd(
    start_server: StartServer, restarted: bool
) -> None:
    """systemd keeps its copy of an activated socket, to start the service again on the next
    client: the drain closes our copy only (no filter, no shutdown of the shared socket),
    also in the process a graceful restart handed the socket to."""
    listener = socket.create_server(("127.0.0.1", 0))
    with contextlib.closing(listener):
        port = listener.getsockname()[1]
        server = start_server(
            ["--grace", "5"], prefix=["sh", "-c", ACTIVATE, "sh"], stdout=listener.fileno()
        )
        assert server.wait_ready() == ("127.0.0.1", port)
        assert get(address_of(server), "/")[0] == 200
        if restarted:
            server.send(signal.SIGHUP)
            new = int(server.wait_for_line(r"started worker pid (\d+)")[1])
            server.wait_for_line(r"this process stopped accepting: draining its \d+ connections")
            assert get(address_of(server), "/")[0] == 200
            server.send(signal.SIGTERM)
            assert first_exit(server) == 0
            wait_gone(new)
        else:
            server.send(signal.SIGTERM)
            assert server.wait_exit() == 0
        # The drain line says so (issue 15 item 3): queued for the next start, not refused.
        server.wait_for_line(
            r"SIGTERM: draining \d+ connections \(grace 5s\); "
            r"new connections wait in systemd's queue for the next start"
        )
        if restarted:
            server.wait_for_line(
                r"this process stopped accepting: .*; new connections go to the worker"
            )
        assert "refused" not in server.output, server.output
        # The next client waits in systemd's socket (here, ours) for the next activation.
        with socket.create_connection(("127.0.0.1", port), timeout=3.0) as client:
            listener.settimeout(IO_TIMEOUT)
            accepted, _ = listener.accept()
            with accepted:
                accepted.sendall(b"x")
                assert client.recv(1) == b"x"


@pytest.mark.slow
def test_socket_activation_leaves_the_unix_socket_file_to_its_owner(
    start_server: StartServer, short_dir: Path
) -> None:
    """systemd (here, the test) made the socket file and keeps listening on it after us:
    neither the server nor the process a graceful restart hands the socket to removes it."""
    path = short_dir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    server = activated(start_server, listener, "--grace", "5")
    server.wait_for_line(rf"listening on unix:{re.escape(str(path))} ")
    assert unix_get(path) == (200, "hello from graceserve\n")

    server.send(signal.SIGHUP)
    new = int(server.wait_for_line(r"started worker pid (\d+)")[1])
    server.wait_for_line(r"this process stopped accepting: draining its \d+ connections")
    assert path.is_socket(), f"pid {server.proc.pid} removed {path}, which it did not create"
    assert unix_get(path) == (200, "hello from graceserve\n")
    server.send(signal.SIGTERM)
    assert first_exit(server) == 0
    wait_gone(new)
    assert path.is_socket(), f"{path} removed by graceserve, which did not create it"


def test_socket_activation_meant_for_another_process_is_ignored(start_server: StartServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        # LISTEN_PID names the test process, as if the variables had leaked from a parent.
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
        server = start_server(
            ["--bind", "127.0.0.1:0"],
            prefix=["sh", "-c", PASS_FD_3, "sh"],
            stdout=listener.fileno(),
            env=env,
        )
        host, bound = server.wait_ready()
        assert (host, bound != port) == ("127.0.0.1", True)
        assert get(address_of(server), "/")[0] == 200
        server.send(signal.SIGTERM)
        assert server.wait_exit() == 0


# -- sd_notify, end to end ---------------------------------------------------------------


def start_app(
    start_server: StartServer, directory: Path, supervisor: Supervisor, *args: str
) -> ServerProcess:
    """Serve test_restart's app (a POST waits for its body) with NOTIFY_SOCKET set."""
    (directory / "app.py").write_text(APP)
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", *args],
        cwd=directory,
        env={"NOTIFY_SOCKET": supervisor.address, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    server.wait_ready()
    return server


def drain_fields(supervisor: Supervisor, stopping: Message) -> list[str]:
    """What the drain told systemd, from STOPPING=1 on: STOPPING, STATUS and EXTEND fields."""
    wanted = ("STOPPING=", "STATUS=", "EXTEND_TIMEOUT_USEC=")
    return [item for item in supervisor.fields_since(stopping) if item.startswith(wanted)]


def test_notify_ready_then_stopping_with_the_remaining_count(
    start_server: StartServer, supervisor: Supervisor, tmp_path: Path
) -> None:
    server = start_app(start_server, tmp_path, supervisor, "--grace", str(GRACE))
    host, port = address_of(server)
    pid = server.proc.pid
    ready = supervisor.wait_for(lambda m: m.has("READY=1"))
    assert ready.pid == pid
    assert ready.get("STATUS") == f"listening on http://{host}:{port}"

    with contextlib.closing(post_in_flight((host, port))) as sock:
        server.send(signal.SIGTERM)
        stopping = supervisor.wait_for(lambda m: m.has("STOPPING=1"))
        supervisor.wait_for(lambda m: (m.get("STATUS") or "").startswith("draining:"))
        assert finish_post(sock)[0] == 200
    assert server.wait_exit() == 0

    messages = supervisor.collect()
    assert {m.pid for m in messages} == {pid}
    assert messages[0] is ready
    assert drain_fields(supervisor, stopping)[:3] == [
        "STOPPING=1",
        "STATUS=draining 1 connections",  # at the start of the drain
        "STATUS=draining: 1 connections remaining",  # a second later
    ]
    assert [m for m in messages if m.has("READY=1")] == [ready]  # never ready again


@pytest.mark.slow
def test_notify_extends_the_timeout_only_while_the_drain_progresses(
    start_server: StartServer, supervisor: Supervisor, tmp_path: Path
) -> None:
    server = start_app(start_server, tmp_path, supervisor, "--grace", str(GRACE))
    address = address_of(server)
    supervisor.wait_for(lambda m: m.has("READY=1"))
    first, second = post_in_flight(address), post_in_flight(address)
    with contextlib.closing(first), contextlib.closing(second):
        server.send(signal.SIGTERM)
        stopping = supervisor.wait_for(lambda m: m.has("STOPPING=1"))
        supervisor.wait_for(lambda m: m.get("STATUS") == "draining: 2 connections remaining")
        assert finish_post(first)[0] == 200  # progress: one is done
        supervisor.wait_for(lambda m: m.get("STATUS") == "draining: 1 connections remaining")
        extend = supervisor.wait_for(lambda m: m.get("EXTEND_TIMEOUT_USEC") is not None)
        supervisor.wait_for(lambda m: m.get("STATUS") == "draining: 1 connections remaining")
        assert finish_post(second)[0] == 200
    assert server.wait_exit() == 0

    usec = int(extend.get("EXTEND_TIMEOUT_USEC") or "0")
    assert 1_000_000 <= usec <= (GRACE + 1) * 1_000_000  # what the grace still allows
    supervisor.collect()
    fields = drain_fields(supervisor, stopping)
    # EXTEND_TIMEOUT_USEC follows a tick that saw fewer connections, and only such a tick.
    assert fields[:6] == [
        "STOPPING=1",
        "STATUS=draining 2 connections",
        "STATUS=draining: 2 connections remaining",
        "STATUS=draining: 1 connections remaining",
        f"EXTEND_TIMEOUT_USEC={usec}",
        "STATUS=draining: 1 connections remaining",
    ], fields
    assert [f for f in fields if f.startswith("EXTEND_TIMEOUT_USEC=")] == [fields[4]]


@pytest.mark.slow
def test_notify_reload_keeps_the_main_pid_and_only_it_speaks(
    start_server: StartServer, supervisor: Supervisor
) -> None:
    server = start_server(
        ["--bind", "127.0.0.1:0", "--grace", "5"], env={"NOTIFY_SOCKET": supervisor.address}
    )
    server.wait_ready()
    main = server.proc.pid
    supervisor.wait_for(lambda m: m.has("READY=1"))

    for generation in (2, 3):  # this process's own server is generation 1
        server.send(signal.SIGHUP)
        reloading = supervisor.wait_for(lambda m: m.has("RELOADING=1"))
        ready = supervisor.wait_for(lambda m: m.has("READY=1"))
        server.wait_for_line(rf"HUP: generation {generation} is ready")
        assert (reloading.pid, ready.pid) == (main, main)
        # One numbering: the log, sd_notify's STATUS (and ctl status) say the same.
        assert ready.get("STATUS") == f"generation {generation} serving", ready
        monotonic_usec = int(reloading.get("MONOTONIC_USEC") or "0")
        assert abs(monotonic_usec - time.monotonic_ns() // 1000) < 60_000_000  # same clock
    assert get(address_of(server), "/")[0] == 200

    server.send(signal.SIGTERM)
    stopping = supervisor.wait_for(lambda m: m.has("STOPPING=1"))
    assert first_exit(server) == 0
    messages = supervisor.collect()
    assert {m.pid for m in messages} == {main}  # workers never speak to systemd
    assert all(m.get("MAINPID") is None for m in messages)
    assert stopping.pid == main
    from_stop = supervisor.fields_since(stopping)
    assert "READY=1" not in from_stop


@pytest.mark.slow
def test_notify_failed_restart_is_ready_again(
    start_server: StartServer, supervisor: Supervisor, tmp_path: Path
) -> None:
    server = start_app(start_server, tmp_path, supervisor, "--grace", "5")
    old = server.proc.pid
    supervisor.wait_for(lambda m: m.has("READY=1"))
    (tmp_path / "app.py").write_text(BROKEN_APP)

    server.send(signal.SIGHUP)
    reloading = supervisor.wait_for(lambda m: m.has("RELOADING=1"))
    ready = supervisor.wait_for(lambda m: m.has("READY=1"))
    server.wait_for_line(r"HUP: reload failed: .*; generation 1 keeps serving")
    assert get(address_of(server), "/")[1] == f"v1 pid {old}"
    server.send(signal.SIGTERM)
    stopping = supervisor.wait_for(lambda m: m.has("STOPPING=1"))
    assert server.wait_exit() == 0

    assert (reloading.pid, ready.pid, stopping.pid) == (old, old, old)
    assert ready.get("MAINPID") is None
    assert "reload failed" in (ready.get("STATUS") or "")


# What systemd does for a unit with two sockets (dash redirects only fds 0-9: Python here).
ACTIVATE_TWO = """
import os, sys
first, second = int(sys.argv[1]), int(sys.argv[2])
os.dup2(first, 3)
os.dup2(second, 4)
os.close(first)
os.close(second)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2")
os.execv(sys.argv[3], sys.argv[3:])
"""


def test_socket_activation_with_two_sockets_serves_on_both(
    start_server: StartServer, short_dir: Path
) -> None:
    """A socket unit with two ``ListenStream=`` (TCP and a Unix socket): ``LISTEN_FDS=2``,
    one server on both; a graceful restart hands both over; neither is shut or removed."""
    tcp = socket.create_server(("127.0.0.1", 0))
    path = short_dir / "second.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    unix.listen()
    with contextlib.closing(tcp), contextlib.closing(unix):
        port = tcp.getsockname()[1]
        first, second = tcp.fileno(), unix.fileno()
        assert min(first, second) > 4, "ACTIVATE_TWO moves them to 3 and 4"
        server = start_server(
            ["--grace", "5"],
            prefix=[sys.executable, "-c", ACTIVATE_TWO, str(first), str(second)],
            pass_fds=(first, second),
        )
        assert server.wait_ready() == ("127.0.0.1", port)
        server.wait_for_line(rf"listening on unix:{re.escape(str(path))} ")
        assert get(("127.0.0.1", port), "/")[0] == 200
        assert unix_get(path) == (200, "hello from graceserve\n")

        server.send(signal.SIGHUP)
        new = int(server.wait_for_line(r"started worker pid (\d+)")[1])
        server.wait_for_line(r"this process stopped accepting: draining its \d+ connections")
        assert get(("127.0.0.1", port), "/")[0] == 200
        assert unix_get(path) == (200, "hello from graceserve\n")
        server.send(signal.SIGTERM)
        assert first_exit(server) == 0
        wait_gone(new)
        assert path.is_socket(), f"{path} removed by graceserve, which did not create it"
        # Both are still in service for systemd: a new client waits in each queue.
        for listener, address in ((tcp, ("127.0.0.1", port)), (unix, str(path))):
            family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as client:
                client.settimeout(IO_TIMEOUT)
                client.connect(address)
                listener.settimeout(IO_TIMEOUT)
                accepted, _ = listener.accept()
                accepted.close()
