"""SignalRelay, in-process: install/restore, recording, waking listeners, the USR1 dump.

Signals are sent to this very process (``os.kill(os.getpid(), ...)``), and only while
the relay's handler for that signal is installed (or the signal is ignored), so a
mistake can never kill the test run.  conftest's autouse fixture additionally checks
that every handler is back and every thread started here has ended.
"""

from __future__ import annotations

import faulthandler
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from graceserve.process.signals import SignalRelay
from testsupport.waiting import wait_until

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
WAIT = 10.0  # seconds: bound on every wait for a signal that was sent


@pytest.fixture
def relay() -> Iterator[SignalRelay]:
    """An installed relay, restored at teardown."""
    installed = SignalRelay()
    installed.install()
    try:
        yield installed
    finally:
        installed.restore()


@pytest.fixture
def hup_ignored() -> Iterator[None]:
    """SIGHUP set to SIG_IGN (as under nohup) for the test, then put back exactly."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.fixture
def int_ignored() -> Iterator[None]:
    """SIGINT set to SIG_IGN (as for a shell's background job), then put back exactly."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def collect(relay: SignalRelay, count: int) -> list[int]:
    """Take signals from the relay until ``count`` have arrived (bounded wait)."""
    taken: list[int] = []
    deadline = time.monotonic() + WAIT
    while len(taken) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"only {taken} of {count} signals arrived")
        relay.wait(remaining)
        taken += relay.take()
    return taken


def current_wakeup_fd() -> int:
    """The wake-up fd now set (without changing it)."""
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


# -- install / restore -------------------------------------------------------------------


def test_install_replaces_every_stop_signal_handler() -> None:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    relay = SignalRelay()
    relay.install()
    try:
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            assert handler is not before[signum], signal.Signals(signum).name
            assert handler is not signal.SIG_DFL
            assert handler is not signal.SIG_IGN
            assert callable(handler)
    finally:
        relay.restore()


def test_restore_puts_back_exactly_the_previous_handlers() -> None:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    relay = SignalRelay()
    relay.install()
    relay.restore()
    for signum in STOP_SIGNALS:
        assert signal.getsignal(signum) is before[signum], signal.Signals(signum).name


def test_restore_puts_back_custom_python_handlers() -> None:
    def mine(signum: int, frame: FrameType | None) -> None:
        pass

    previous = {signum: signal.signal(signum, mine) for signum in STOP_SIGNALS}
    try:
        relay = SignalRelay()
        relay.install()
        assert all(signal.getsignal(signum) is not mine for signum in STOP_SIGNALS)
        relay.restore()
        for signum in STOP_SIGNALS:
            assert signal.getsignal(signum) is mine, signal.Signals(signum).name
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_restore_puts_back_the_wakeup_fd() -> None:
    before = current_wakeup_fd()
    relay = SignalRelay()
    relay.install()
    try:
        assert current_wakeup_fd() not in (-1, before)
    finally:
        relay.restore()
    assert current_wakeup_fd() == before


def test_restore_is_idempotent_and_safe_without_install() -> None:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    SignalRelay().restore()  # never installed
    relay = SignalRelay()
    relay.install()
    relay.restore()
    relay.restore()
    for signum in STOP_SIGNALS:
        assert signal.getsignal(signum) is before[signum]


def test_restore_ends_the_relay_thread() -> None:
    relay = SignalRelay()
    relay.install()
    assert any(t.name == "graceserve-signals" for t in threading.enumerate())
    relay.restore()
    assert not any(t.name == "graceserve-signals" and t.is_alive() for t in threading.enumerate())


def test_install_again_after_restore(relay: SignalRelay) -> None:
    relay.restore()
    relay.install()  # the fixture restores it once more
    os.kill(os.getpid(), signal.SIGTERM)
    assert collect(relay, 1) == [signal.SIGTERM]


def test_install_from_another_thread_is_refused() -> None:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    errors: list[BaseException] = []

    def install() -> None:
        relay = SignalRelay()
        try:
            relay.install()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=install, name="test-installer")
    thread.start()
    thread.join(WAIT)
    assert len(errors) == 1
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before
    assert not any(t.name == "graceserve-signals" and t.is_alive() for t in threading.enumerate())


@pytest.mark.usefixtures("int_ignored")
def test_sigint_inherited_as_ignored_is_installed_anyway() -> None:
    relay = SignalRelay()
    relay.install()
    try:
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert collect(relay, 1) == [signal.SIGINT]
    finally:
        relay.restore()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.usefixtures("hup_ignored")
def test_sighup_inherited_as_ignored_stays_ignored() -> None:
    relay = SignalRelay()
    relay.install()
    try:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)  # ignored: discarded by the kernel
        os.kill(os.getpid(), signal.SIGTERM)
        assert collect(relay, 1) == [signal.SIGTERM]
        assert not relay.wait(0.05)
    finally:
        relay.restore()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


# -- recording ---------------------------------------------------------------------------


def test_nothing_pending_at_first(relay: SignalRelay) -> None:
    assert not relay.pending()
    assert relay.take() == []
    assert relay.wait(0.01) is False


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_each_stop_signal_is_recorded(relay: SignalRelay, signum: int) -> None:
    os.kill(os.getpid(), signum)
    assert relay.wait(WAIT) is True
    assert relay.pending()
    assert relay.take() == [signum]
    assert not relay.pending()
    assert relay.take() == []


def test_signals_are_taken_oldest_first(relay: SignalRelay) -> None:
    sent = [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP]
    for signum in sent:
        os.kill(os.getpid(), signum)  # delivered to ourselves before kill() returns
    assert collect(relay, len(sent)) == sent


def test_signal_before_wait_is_not_lost(relay: SignalRelay) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    wait_until(relay.pending, timeout=WAIT, what="the relay to record SIGTERM")
    assert relay.wait(0) is True  # already pending: returns at once
    assert relay.take() == [signal.SIGTERM]


def test_signal_does_not_raise_keyboard_interrupt(relay: SignalRelay) -> None:
    os.kill(os.getpid(), signal.SIGINT)  # with the default handler this would raise
    assert collect(relay, 1) == [signal.SIGINT]


def test_wait_times_out_without_a_signal(relay: SignalRelay) -> None:
    started = time.monotonic()
    assert relay.wait(0.05) is False
    assert time.monotonic() - started >= 0.04


# -- waking waiters ----------------------------------------------------------------------


def blocked_waiter(
    condition: threading.Condition, predicate: Callable[[], bool], timeout: float
) -> tuple[threading.Thread, list[Any]]:
    """A thread waiting on ``condition`` for ``predicate``; returns once it is really waiting.

    The thread marks itself waiting with the lock held; since ``wait`` releases that lock
    atomically, our acquiring it proves the thread is inside ``wait``.
    """
    state: dict[str, Any] = {"waiting": False}
    result: list[Any] = []

    def wait() -> None:
        with condition:
            state["waiting"] = True
            started = time.monotonic()
            woke = condition.wait_for(predicate, timeout)
            result.append((woke, time.monotonic() - started))

    thread = threading.Thread(target=wait, name="test-waiter")
    thread.start()
    wait_until(lambda: state["waiting"], timeout=WAIT, what="the waiter to start")
    with condition:  # only free once the waiter is inside wait()
        assert not result
    return thread, result


def test_relay_wakes_a_listener_condition(relay: SignalRelay) -> None:
    listener = threading.Condition()
    relay.add_listener(listener)
    thread, result = blocked_waiter(listener, relay.pending, timeout=60.0)
    os.kill(os.getpid(), signal.SIGHUP)
    thread.join(WAIT)
    assert not thread.is_alive(), "the listener was not woken by the signal"
    woke, elapsed = result[0]
    assert woke is True
    assert elapsed < WAIT
    assert relay.take() == [signal.SIGHUP]


def test_relay_wakes_its_own_waiter(relay: SignalRelay) -> None:
    outcome: list[bool] = []
    checks: list[bool] = []
    original = relay.pending

    def pending() -> bool:  # called by relay.wait() with relay.condition held
        checks.append(original())
        return checks[-1]

    relay.pending = pending  # type: ignore[method-assign]
    waiter = threading.Thread(target=lambda: outcome.append(relay.wait(60.0)), name="test-w")
    waiter.start()
    wait_until(lambda: checks, timeout=WAIT, what="relay.wait() to check for signals")
    with relay.condition:  # free only once the waiter is inside wait()
        assert checks == [False]
    os.kill(os.getpid(), signal.SIGQUIT)
    waiter.join(WAIT)
    assert not waiter.is_alive(), "relay.wait() was not woken by the signal"
    assert outcome == [True]
    assert relay.take() == [signal.SIGQUIT]


def test_every_listener_is_woken(relay: SignalRelay) -> None:
    listeners = [threading.Condition() for _ in range(3)]
    for listener in listeners:
        relay.add_listener(listener)
    waiters = [blocked_waiter(listener, relay.pending, timeout=60.0) for listener in listeners]
    os.kill(os.getpid(), signal.SIGTERM)
    for thread, result in waiters:
        thread.join(WAIT)
        assert not thread.is_alive()
        assert result[0][0] is True
    assert relay.take() == [signal.SIGTERM]


# -- USR1 --------------------------------------------------------------------------------


def test_usr1_dumps_every_thread_and_is_not_a_stop_signal(
    capfd: pytest.CaptureFixture[str], graceserve_log: list[str]
) -> None:
    """The dump goes to stderr, directly (faulthandler) or through graceserve's logger."""
    before = signal.getsignal(signal.SIGUSR1)
    idle = threading.Event()
    thread = threading.Thread(target=idle.wait, args=(WAIT,), name="test-idle-thread")
    thread.start()
    relay = SignalRelay()
    relay.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        stderr: list[str] = []

        def dump() -> str:
            stderr.append(capfd.readouterr().err)
            return "".join(stderr) + "\n".join(graceserve_log)

        def complete() -> bool:
            text = dump()
            return "test_usr1_dumps_every_thread_and_is_not_a_stop_signal" in text and (
                "test-idle-thread" in text or re.search(r"in wait$", text, re.MULTILINE) is not None
            )

        # every thread: this one, and one that merely waits
        wait_until(complete, timeout=WAIT, what="a USR1 dump of every thread")
        assert not relay.pending()  # USR1 is not a stop signal
        os.kill(os.getpid(), signal.SIGTERM)
        assert collect(relay, 1) == [signal.SIGTERM]  # and the relay still works
    finally:
        relay.restore()
        idle.set()
        thread.join(WAIT)
    assert signal.getsignal(signal.SIGUSR1) is before
    unregister: Callable[[int], object] = faulthandler.unregister  # (typeshed: -> None)
    assert unregister(signal.SIGUSR1) is False  # faulthandler holds nothing on USR1 any more
