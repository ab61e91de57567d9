"""DrainController and DrainReport, without sockets.

The controller stores opaque keys and values, so these tests register plain
``object()`` keys and drive time with a fake clock where the answer depends on
it.  Cross-thread wake-ups are checked by behaviour, never by sleeping: a
waiter is known to be blocked inside ``Condition.wait`` when its ``wake_up``
predicate has been evaluated (it runs with the lock held, just before the
wait), and it must return long before its generous deadline.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceserve.core.drain import DrainController, DrainReport
from testsupport.waiting import Call

JOIN_TIMEOUT = 5.0  # seconds a waiter may take to return once it should have
LONG_DEADLINE = 30.0  # seconds: far beyond JOIN_TIMEOUT, so "returned" means "was woken"


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WaitingProbe:
    """A ``wake_up`` predicate that says when the waiter is blocked, and can be flipped."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.flag = False

    def __call__(self) -> bool:
        self.waiting.set()
        return self.flag


def release_waiters(controller: DrainController[Any, Any]) -> None:
    """Empty the registry and notify, so any leftover waiter returns."""
    with controller.locked_items() as items:
        keys = [key for key, _ in items]
    for key in keys:
        controller.discard(key)
    with controller.condition:
        controller.condition.notify_all()


# -- the registry -----------------------------------------------------------


def test_add_get_discard_and_count() -> None:
    controller: DrainController[object, str] = DrainController()
    a, b, c = object(), object(), object()
    assert controller.count == 0
    controller.add(a, "a")
    controller.add(b, "b")
    controller.add(c, "c")
    assert controller.count == 3
    assert controller.get(b) == "b"
    assert controller.discard(b) == "b"
    assert controller.get(b) is None
    assert controller.count == 2
    with controller.locked_items() as items:
        assert sorted(value for _, value in items) == ["a", "c"]


def test_add_same_key_twice_counts_once() -> None:
    controller: DrainController[object, str] = DrainController()
    key = object()
    controller.add(key, "first")
    controller.add(key, "second")
    assert controller.count == 1
    assert controller.get(key) == "second"
    assert controller.discard(key) == "second"
    assert controller.count == 0


def test_discard_is_idempotent_and_count_never_negative() -> None:
    controller: DrainController[object, str] = DrainController()
    key, stranger = object(), object()
    controller.add(key, "v")
    assert controller.discard(key) == "v"
    assert controller.discard(key) is None
    assert controller.discard(stranger) is None
    assert controller.count == 0
    controller.add(key, "again")
    assert controller.count == 1


def test_discard_of_a_value_none_entry_still_counts_and_wakes() -> None:
    # The controller promises opaque values; None is a value like any other.
    controller: DrainController[object, None] = DrainController()
    key = object()
    controller.add(key, None)
    controller.begin()
    probe = WaitingProbe()
    waiter = Call(controller.wait_for_zero, time.monotonic() + LONG_DEADLINE, probe)
    try:
        assert probe.waiting.wait(JOIN_TIMEOUT)
        controller.discard(key)
        assert controller.count == 0
        assert waiter.result() is True, "discarding the last entry did not wake the waiter"
        report = controller.finish()
        assert report.served_during_drain == 1
    finally:
        release_waiters(controller)
        waiter.join(JOIN_TIMEOUT)


def test_concurrent_add_discard_ends_at_zero() -> None:
    controller: DrainController[object, int] = DrainController()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for i in range(500):
                key = object()
                controller.add(key, i)
                assert controller.count >= 1
                assert controller.discard(key) == i
                assert controller.discard(key) is None
        except BaseException as exc:
            errors.append(exc)

    workers = [Call(churn) for _ in range(8)]
    for worker in workers:
        worker.result(timeout=20.0)
    assert errors == []
    assert controller.count == 0


def test_locked_items_holds_the_lock_and_snapshots() -> None:
    controller: DrainController[object, str] = DrainController()
    key = object()
    controller.add(key, "v")
    with controller.locked_items() as items:
        assert items == [(key, "v")]
        other_thread_got_lock = Call(lambda: controller.condition.acquire(blocking=False)).result()
        assert other_thread_got_lock is False
        items.clear()  # a snapshot: the registry is untouched
    assert controller.count == 1


# -- waiting for zero -------------------------------------------------------


def test_wait_for_zero_when_already_empty_returns_true() -> None:
    controller: DrainController[object, str] = DrainController(clock=FakeClock())
    assert controller.wait_for_zero() is True
    assert controller.wait_for_zero(deadline=0.0) is True


def test_wait_for_zero_wakes_when_last_connection_is_discarded_from_another_thread() -> None:
    controller: DrainController[object, str] = DrainController()
    a, b = object(), object()
    controller.add(a, "a")
    controller.add(b, "b")
    probe = WaitingProbe()
    waiter = Call(controller.wait_for_zero, None, probe)
    try:
        assert probe.waiting.wait(JOIN_TIMEOUT), "waiter never started waiting"
        Call(controller.discard, a).result()
        waiter.join(0.05)  # give a wrong early return a chance to show
        assert waiter.is_alive(), "waiter returned while a connection was still live"
        Call(controller.discard, b).result()
        assert waiter.result() is True
    finally:
        release_waiters(controller)
        waiter.join(JOIN_TIMEOUT)


def test_wait_for_zero_with_deadline_wakes_long_before_it() -> None:
    controller: DrainController[object, str] = DrainController()
    key = object()
    controller.add(key, "v")
    probe = WaitingProbe()
    waiter = Call(controller.wait_for_zero, time.monotonic() + LONG_DEADLINE, probe)
    try:
        assert probe.waiting.wait(JOIN_TIMEOUT)
        controller.discard(key)
        assert waiter.result() is True
    finally:
        release_waiters(controller)
        waiter.join(JOIN_TIMEOUT)


def test_wait_for_zero_past_deadline_returns_false_without_waiting() -> None:
    clock = FakeClock(50.0)
    controller: DrainController[object, str] = DrainController(clock=clock)
    controller.add(object(), "v")
    # The fake clock never moves: only an immediate return can end this call.
    assert Call(controller.wait_for_zero, 50.0).result() is False
    assert Call(controller.wait_for_zero, 10.0).result() is False
    assert controller.count == 1


def test_wait_for_zero_returns_false_when_the_deadline_passes() -> None:
    controller: DrainController[object, str] = DrainController()
    controller.add(object(), "v")
    assert controller.wait_for_zero(time.monotonic() + 0.05) is False
    assert controller.count == 1


def test_wake_up_predicate_true_returns_false_at_once() -> None:
    controller: DrainController[object, str] = DrainController()
    controller.add(object(), "v")
    assert Call(controller.wait_for_zero, None, lambda: True).result() is False


def test_wake_up_predicate_returns_false_when_notified() -> None:
    controller: DrainController[object, str] = DrainController()
    controller.add(object(), "v")
    probe = WaitingProbe()
    waiter = Call(controller.wait_for_zero, None, probe)
    try:
        assert probe.waiting.wait(JOIN_TIMEOUT)
        with controller.condition:
            probe.flag = True
            controller.condition.notify_all()
        assert waiter.result() is False
        assert controller.count == 1
    finally:
        release_waiters(controller)
        waiter.join(JOIN_TIMEOUT)


def test_wake_up_is_not_consulted_once_empty() -> None:
    controller: DrainController[object, str] = DrainController()
    # Zero wins over a wake-up: nothing is live, so the wait succeeded.
    assert controller.wait_for_zero(None, lambda: True) is True


# -- the drain's state ------------------------------------------------------


def test_begin_is_true_only_once() -> None:
    clock = FakeClock(7.0)
    controller: DrainController[object, str] = DrainController(clock=clock)
    controller.add(object(), "a")
    controller.add(object(), "b")
    assert controller.draining is False
    assert controller.started_at is None
    assert controller.begin() is True
    assert controller.draining is True
    assert controller.started_at == 7.0
    clock.advance(3.0)
    controller.add(object(), "c")
    assert controller.begin() is False
    assert controller.started_at == 7.0  # the second call changed nothing
    assert controller.finish().active_at_start == 2


def test_begin_is_true_for_exactly_one_of_many_threads() -> None:
    controller: DrainController[object, str] = DrainController()
    barrier = threading.Barrier(6)

    def race() -> bool:
        barrier.wait(JOIN_TIMEOUT)
        return controller.begin()

    callers = [Call(race) for _ in range(6)]
    assert sorted(caller.result() for caller in callers) == [False] * 5 + [True]


def test_default_clock_is_monotonic() -> None:
    controller: DrainController[object, str] = DrainController()
    before = time.monotonic()
    controller.begin()
    after = time.monotonic()
    assert controller.started_at is not None
    assert before <= controller.started_at <= after


def test_mark_cut_before_the_drain_is_not_accounted() -> None:
    controller: DrainController[object, str] = DrainController(clock=FakeClock())
    key = object()
    controller.add(key, "v")
    with controller.locked_items():
        assert controller.mark_cut(key) is True
        assert controller.is_cut(key) is True
    controller.discard(key)
    controller.begin()
    report = controller.finish()
    assert (report.forced, report.idle_closed, report.served_during_drain) == (0, 0, 0)
    assert report.clean is True


def test_mark_cut_forced_and_unforced_accounting() -> None:
    controller: DrainController[object, str] = DrainController(clock=FakeClock())
    forced, idle, unknown = object(), object(), object()
    controller.add(forced, "forced")
    controller.add(idle, "idle")
    controller.begin()
    with controller.locked_items():
        assert controller.mark_cut(forced) is True
        assert controller.mark_cut(forced) is False  # already cut: not counted twice
        assert controller.mark_cut(forced, forced=False) is False
        assert controller.mark_cut(idle, forced=False) is True
        assert controller.mark_cut(unknown) is False  # not registered
        assert controller.is_cut(forced)
        assert controller.is_cut(idle)
        assert not controller.is_cut(unknown)
    controller.discard(forced)
    controller.discard(idle)
    # A cut connection that ended does not count as served; the cut mark is gone.
    assert not controller.is_cut(forced)
    report = controller.finish()
    assert report.forced == 1
    assert report.idle_closed == 1
    assert report.served_during_drain == 0


def test_mark_cut_after_discard_is_refused() -> None:
    controller: DrainController[object, str] = DrainController(clock=FakeClock())
    key = object()
    controller.add(key, "v")
    controller.begin()
    controller.discard(key)
    with controller.locked_items():
        assert controller.mark_cut(key) is False
    assert controller.finish().forced == 0


def test_served_during_drain_counts_only_connections_ending_during_the_drain() -> None:
    controller: DrainController[object, str] = DrainController(clock=FakeClock())
    before, during, backlog = object(), object(), object()
    controller.add(before, "ends before the drain")
    controller.add(during, "ends during the drain")
    controller.discard(before)
    controller.begin()
    controller.add(backlog, "accepted by the drain")
    controller.discard(during)
    controller.discard(backlog)
    controller.discard(backlog)  # a second discard does not count again
    report = controller.finish(backlog_accepted=1)
    assert report.served_during_drain == 2
    assert report.active_at_start == 1
    assert report.backlog_accepted == 1
    assert report.clean is True


# -- the report -------------------------------------------------------------


def test_report_fields() -> None:
    clock = FakeClock(10.0)
    controller: DrainController[object, str] = DrainController(clock=clock)
    served, cut, idle, stuck = object(), object(), object(), object()
    for key in (served, cut, idle):
        controller.add(key, "live at start")
    clock.advance(1.0)
    assert controller.begin() is True
    controller.add(stuck, "from the backlog, never ends")
    controller.discard(served)
    with controller.locked_items():
        controller.mark_cut(cut, forced=True)
        controller.mark_cut(idle, forced=False)
    controller.discard(cut)
    controller.discard(idle)
    clock.advance(2.5)
    report = controller.finish(backlog_accepted=1)
    assert report == DrainReport(
        clean=False,
        forced=1,
        elapsed=2.5,
        active_at_start=3,
        served_during_drain=1,
        backlog_accepted=1,
        idle_closed=1,
        remaining=1,
    )


def test_report_clean_despite_idle_closed() -> None:
    clock = FakeClock()
    controller: DrainController[object, str] = DrainController(clock=clock)
    idle = object()
    controller.add(idle, "keep-alive")
    controller.begin()
    with controller.locked_items():
        controller.mark_cut(idle, forced=False)
    controller.discard(idle)
    report = controller.finish()
    assert report.clean is True
    assert (report.forced, report.idle_closed, report.remaining) == (0, 1, 0)


def test_report_not_clean_with_remaining_even_if_nothing_forced() -> None:
    controller: DrainController[object, str] = DrainController(clock=FakeClock())
    controller.add(object(), "still live")
    controller.begin()
    report = controller.finish()
    assert report.forced == 0
    assert report.remaining == 1
    assert report.clean is False


def test_finish_without_begin_reports_zero_elapsed() -> None:
    clock = FakeClock(3.0)
    controller: DrainController[object, str] = DrainController(clock=clock)
    report = controller.finish()
    assert report.elapsed == 0.0
    assert report.active_at_start == 0
    assert report.clean is True


def test_finish_builds_the_report_once() -> None:
    clock = FakeClock()
    controller: DrainController[object, str] = DrainController(clock=clock)
    key = object()
    controller.add(key, "v")
    controller.begin()
    assert controller.report is None
    clock.advance(1.0)
    first = controller.finish(backlog_accepted=2)
    clock.advance(5.0)
    controller.discard(key)
    second = controller.finish(backlog_accepted=9)
    assert second is first
    assert controller.report is first
    assert (first.elapsed, first.backlog_accepted, first.remaining) == (1.0, 2, 1)


def test_wait_report_gets_the_report_from_another_thread() -> None:
    controller: DrainController[object, str] = DrainController()
    controller.begin()
    waiter = Call(controller.wait_report, None)
    try:
        waiter.join(0.05)  # give a wrong early return a chance to show
        assert waiter.is_alive(), "wait_report returned before finish()"
        report = Call(controller.finish).result()
        assert waiter.result() is report
    finally:
        controller.finish()
        waiter.join(JOIN_TIMEOUT)


def test_wait_report_with_long_deadline_wakes_on_finish() -> None:
    controller: DrainController[object, str] = DrainController()
    waiter = Call(controller.wait_report, time.monotonic() + LONG_DEADLINE)
    try:
        report = controller.finish()
        assert waiter.result() is report
    finally:
        controller.finish()
        waiter.join(JOIN_TIMEOUT)


def test_wait_report_deadline_returns_none() -> None:
    clock = FakeClock(20.0)
    controller: DrainController[object, str] = DrainController(clock=clock)
    assert Call(controller.wait_report, 20.0).result() is None
    real: DrainController[object, str] = DrainController()
    assert real.wait_report(time.monotonic() + 0.05) is None
    report = controller.finish()
    assert controller.wait_report(0.0) is report  # once finished, the deadline is moot


def test_report_is_immutable() -> None:
    report = DrainController[object, str](clock=FakeClock()).finish()
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.clean = False  # type: ignore[misc]


# -- a model check of the accounting ----------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "discard", "cut", "idle", "begin"]),
        st.integers(min_value=0, max_value=5),
    ),
    max_size=40,
)


@settings(max_examples=100, database=None, deadline=None)
@given(ops=OPS, backlog=st.integers(min_value=0, max_value=3))
def test_accounting_matches_a_model(ops: list[tuple[str, int]], backlog: int) -> None:
    clock = FakeClock()
    controller: DrainController[int, str] = DrainController(clock=clock)
    live: set[int] = set()
    cut: dict[int, bool] = {}  # key -> cut by force
    idle_counted: set[int] = set()  # closed while idle during the drain
    draining = False
    at_start = forced = idle = served = 0
    for op, key in ops:
        if op == "add":
            controller.add(key, f"conn-{key}")
            live.add(key)
        elif op == "discard":
            controller.discard(key)
            if key in live:
                live.discard(key)
                idle_counted.discard(key)
                if key in cut:
                    del cut[key]
                elif draining:
                    served += 1
        elif op in ("cut", "idle"):
            by_force = op == "cut"
            with controller.locked_items():
                marked = controller.mark_cut(key, forced=by_force)
            # New cuts count; so does forcing a connection that was only closed while idle.
            upgrade = by_force and cut.get(key) is False
            assert marked == (key in live and (key not in cut or upgrade))
            if marked:
                cut[key] = by_force
                if key in idle_counted:
                    idle_counted.discard(key)
                    idle -= 1
                if draining and by_force:
                    forced += 1
                elif draining:
                    idle += 1
                    idle_counted.add(key)
        else:
            started = controller.begin()
            assert started == (not draining)
            if not draining:
                draining = True
                at_start = len(live)
        assert controller.count == len(live) >= 0
        assert controller.draining == draining
        assert idle >= 0
    clock.advance(1.5)
    report = controller.finish(backlog_accepted=backlog)
    assert report.forced == forced
    assert report.idle_closed == idle
    assert report.served_during_drain == served
    assert report.active_at_start == at_start
    assert report.remaining == len(live)
    assert report.backlog_accepted == backlog
    assert report.clean == (forced == 0 and not live)
    assert report.elapsed == (1.5 if draining else 0.0)
