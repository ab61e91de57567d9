"""Signals that arrive together are each acted on, in order (``serve()`` in this process).

The kernel keeps one pending instance of each signal and delivers the lowest number
first, so two ``kill`` commands in a row cannot be relied on to reach a process as two
signals in the order sent.  What can be made exact is what the relay sees: its
wake-up socket carries one byte per signal, and here the test writes a batch of
bytes into it, exactly as the interpreter's C-level handler does, while the server is
serving a request that will not end by itself.
"""

from __future__ import annotations

import re
import signal
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from graceserve.process import runner, supervisor
from graceserve.process.signals import SignalRelay
from testsupport.waiting import Call, wait_until

TIMEOUT = 10.0


class Gated(socketserver.StreamRequestHandler):
    """Read a line, then wait for the test (deaf to the cut), then answer."""

    entered = threading.Event()
    release = threading.Event()

    def handle(self) -> None:
        self.rfile.readline(1024)
        Gated.entered.set()
        Gated.release.wait(TIMEOUT)
        self.wfile.write(b"done\n")


@pytest.fixture
def relays(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SignalRelay]]:
    """The SignalRelay instances serve() creates."""
    made: list[SignalRelay] = []

    class Recording(SignalRelay):
        def install(self) -> None:
            made.append(self)
            super().install()

    monkeypatch.setattr(runner, "SignalRelay", Recording)
    Gated.entered.clear()
    Gated.release.clear()
    yield made
    Gated.release.set()


def deliver(relay: SignalRelay, *signums: int) -> None:
    """What the C-level handler writes for ``signums`` arriving back to back."""
    writer = relay._writer  # the relay's own wake-up socket
    assert writer is not None
    writer.send(bytes(signums))


def port_from(messages: list[str]) -> int:
    for message in messages:
        match = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", message)
        if match:
            return int(match[1])
    return 0


def drive(relays: list[SignalRelay], messages: list[str], batches: list[tuple[int, ...]]) -> None:
    """Put a request in flight, then deliver each batch (after the previous one's line)."""
    wait_until(lambda: port_from(messages), what="the readiness line")
    client = socket.create_connection(("127.0.0.1", port_from(messages)), timeout=TIMEOUT)
    try:
        client.sendall(b"work\n")
        assert Gated.entered.wait(TIMEOUT)
        for index, batch in enumerate(batches):
            if index:  # the lame duck has begun: the first batch was acted on
                wait_until(lambda: any("lame duck" in m for m in messages), what="lame duck")
            deliver(relays[0], *batch)
        wait_until(lambda: any("stopped:" in m for m in messages), what="the end")
    finally:
        client.close()


BATCHES = [
    ((signal.SIGTERM, signal.SIGTERM), 143),
    ((signal.SIGTERM, signal.SIGINT), 130),
    ((signal.SIGINT, signal.SIGINT), 130),
    ((signal.SIGINT, signal.SIGTERM), 143),
    ((signal.SIGTERM, signal.SIGQUIT), 131),
    ((signal.SIGUSR1, signal.SIGTERM, signal.SIGTERM), 143),
]


@pytest.mark.parametrize(
    ("batch", "code"),
    BATCHES,
    ids=["-".join(signal.Signals(s).name[3:] for s in case[0]) for case in BATCHES],
)
def test_a_second_stop_signal_in_the_same_batch_forces(
    relays: list[SignalRelay],
    graceserve_log: list[str],
    batch: tuple[int, ...],
    code: int,
) -> None:
    driver = Call(drive, relays, graceserve_log, [batch])
    assert runner.serve(Gated, ("127.0.0.1", 0), grace=3.0) == code
    driver.result(TIMEOUT)
    assert any(f"exit code {code}" in m for m in graceserve_log), graceserve_log


def test_hup_then_term_during_the_lame_duck_forces(
    relays: list[SignalRelay], graceserve_log: list[str]
) -> None:
    batches = [(signal.SIGTERM,), (signal.SIGHUP, signal.SIGTERM)]
    driver = Call(drive, relays, graceserve_log, batches)
    assert runner.serve(Gated, ("127.0.0.1", 0), grace=3.0, drain_delay=30.0) == 143
    driver.result(TIMEOUT)
    assert any("SIGHUP: already stopping" in m for m in graceserve_log), graceserve_log


NEVER_READY = 10**9  # the key of a worker that never says READY (no such process)


def test_hup_then_term_abandons_the_reload_and_stops(
    relays: list[SignalRelay], graceserve_log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HUP then TERM in one batch: the HUP starts a reload (its worker never gets ready
    here), the TERM abandons it unreported and stops the process like a first stop."""
    spawned: list[int] = []
    abandoned: list[int] = []

    def spawn(self: supervisor.Supervisor, generation: int, spare: bool = False) -> int:
        spawned.append(generation)
        return NEVER_READY

    monkeypatch.setattr(supervisor.Supervisor, "spawn", spawn)
    monkeypatch.setattr(supervisor.Supervisor, "abandon", lambda self, key: abandoned.append(key))

    def hup_then_term() -> None:
        wait_until(lambda: port_from(graceserve_log), what="the readiness line")
        deliver(relays[0], signal.SIGHUP, signal.SIGTERM)

    driver = Call(hup_then_term)
    assert runner.serve(Gated, ("127.0.0.1", 0), grace=3.0) == 0
    driver.result(TIMEOUT)
    assert (spawned, abandoned) == ([2], [NEVER_READY]), graceserve_log
    assert any("the reload to generation 2 is abandoned" in m for m in graceserve_log)
    assert any("SIGTERM: draining" in m for m in graceserve_log), graceserve_log
    assert not any("reload failed" in m for m in graceserve_log), graceserve_log
