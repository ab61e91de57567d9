"""The accept table (``graceserve.process.balance``): least-connections accepting.

Pure logic over a real shared page (a memfd mapped twice, as a supervisor and
its workers map it); the end-to-end split between real workers is in
``test_workers.py``.
"""

from __future__ import annotations

import os

import pytest

from graceserve.process.balance import (
    BALANCE_VARIABLE,
    IDLE,
    SLOTS,
    AcceptTable,
    Seat,
    seat_from_environment,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def table() -> AcceptTable:
    made = AcceptTable.create()
    if made is None:
        pytest.skip("no memfd_create here")
    return made


def seat_of(table: AcceptTable) -> Seat:
    """A worker's seat: the table mapped again, from a copy of the descriptor."""
    slot = table.take()
    assert slot is not None
    return Seat(AcceptTable.attach(os.dup(table.fileno())), slot)


def test_a_worker_holding_more_leaves_the_client_to_one_holding_fewer(table: AcceptTable) -> None:
    first, second = seat_of(table), seat_of(table)
    assert (first.slot, second.slot) == (0, 1)
    assert first.may_accept(0)  # the other does not accept yet (IDLE)
    assert second.may_accept(0)
    assert not first.may_accept(1)  # second holds 0
    assert second.may_accept(0)
    assert second.may_accept(1)
    assert first.may_accept(1)  # equal: both may
    assert table.counts() == (1, 1)


def test_a_worker_that_left_is_no_longer_deferred_to(table: AcceptTable) -> None:
    first, second = seat_of(table), seat_of(table)
    assert second.may_accept(0)
    second.leave()
    assert table.counts()[1] == IDLE
    assert first.may_accept(5)
    assert second.may_accept(0)  # a seat that left accepts without publishing
    assert table.counts()[1] == IDLE


def test_a_released_slot_is_idle_and_handed_out_again(table: AcceptTable) -> None:
    first, second = seat_of(table), seat_of(table)
    assert second.may_accept(0)
    table.release(second.slot)
    assert first.may_accept(3)  # the reaped worker's count is gone
    assert table.take() == second.slot
    assert table.counts() == (3, IDLE)


def test_a_full_table_hands_out_no_slot(table: AcceptTable) -> None:
    for _ in range(SLOTS):
        assert table.take() is not None
    assert table.take() is None


@pytest.mark.parametrize("value", ["", "x 1", "7", "3 -1", f"3 {SLOTS}", "999 0"])
def test_a_missing_or_bad_variable_means_no_seat(value: str) -> None:
    environ = {BALANCE_VARIABLE: value} if value else {}
    assert seat_from_environment(environ) is None
    assert BALANCE_VARIABLE not in environ  # consumed


def test_the_variable_gives_the_seat(table: AcceptTable) -> None:
    slot = table.take()
    environ = {BALANCE_VARIABLE: f"{os.dup(table.fileno())} {slot}"}
    seat = seat_from_environment(environ)
    assert seat is not None
    assert seat.slot == slot
    assert seat.may_accept(4)
    assert table.counts() == (4,)


def test_in_a_burst_a_worker_defers_only_past_a_sixteenth(table: AcceptTable) -> None:
    """Strict turns would halve the accept rate of a burst of thousands: within
    ``held // SLACK`` of the fewest, a worker accepts too."""
    first, second = seat_of(table), seat_of(table)
    assert second.may_accept(470)
    assert first.may_accept(500)  # 500 - 500 // 16 = 469 <= 470
    assert second.may_accept(460)
    assert not first.may_accept(500)  # 460 < 469


def test_a_seat_publishes_its_count_until_it_leaves(table: AcceptTable) -> None:
    """``publish`` (each turn of the accept loop) writes the count without asking;
    once the worker has left, its IDLE stands."""
    seat = seat_of(table)
    assert seat.publish(3)
    assert table.counts() == (3,)
    seat.leave()
    assert not seat.publish(5)
    assert table.counts() == (IDLE,)
