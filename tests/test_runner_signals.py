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
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
from conftest import Call, wait_until

from graceserve import runner
from graceserve.signals import SignalRelay

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


class FakeSupervisor:
    """Stands in for the supervisor a HUP creates: its worker is ready after a moment
    unless a signal interrupts."""

    made: ClassVar[list[FakeSupervisor]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.abandoned = False
        FakeSupervisor.made.append(self)

    def first_worker(self, deadline: float, interrupted: Callable[[], bool]) -> str | None:
        ready_at = time.monotonic() + 0.3
        while time.monotonic() < ready_at:  # bounded by ready_at
            if interrupted():
                return "interrupted by a signal"
            time.sleep(0.005)  # the fake worker's start-up time, not synchronisation
        return None

    def close(self) -> None:
        self.abandoned = True


def test_hup_then_term_abandons_the_restart_and_stops(
    relays: list[SignalRelay], graceserve_log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeSupervisor.made.clear()
    monkeypatch.setattr(runner, "Supervisor", FakeSupervisor)

    def hup_then_term() -> None:
        wait_until(lambda: port_from(graceserve_log), what="the readiness line")
        deliver(relays[0], signal.SIGHUP, signal.SIGTERM)

    driver = Call(hup_then_term)
    assert runner.serve(Gated, ("127.0.0.1", 0), grace=3.0) == 0
    driver.result(TIMEOUT)
    assert [s.abandoned for s in FakeSupervisor.made] == [True], graceserve_log
    assert any("restart failed: interrupted by a signal" in m for m in graceserve_log)
    assert any("SIGTERM: draining" in m for m in graceserve_log), graceserve_log
