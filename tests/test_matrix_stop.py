"""The stop contract in every mode: TERM drains, the grace cuts, a second signal forces.

Rows of the contract matrix (README: "What it does", "Signals", "Exit codes",
``graceserve.stopping``): each test is one guarantee, checked for a handler and
a WSGI app, in one process, one process after a HUP, ``--workers 2`` and
``--workers 2`` after a HUP.  The experiments (``testsupport.contract``) run
at once per combination, each on its own ``python -m graceserve``; the rows
assert on what they saw.  A row that main breaks today is ``xfail(strict)``
with the finding (``testsupport.matrix``): it turns red when the fix lands.
"""

from __future__ import annotations

import signal

import pytest

from testsupport import contract
from testsupport.contract import Cut, LameDuck, LoadRun, TermDrain
from testsupport.matrix import Lab, rows
from testsupport.rawhttp import EOF, RESET, Reply

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(300)]

PHASES = [
    {
        "term": contract.term_drain,
        "grace cut": contract.grace_cut,
        "second term": contract.second_term,
        "quit": contract.quit_in_flight,
        "quit idle": contract.quit_idle,
        "lame duck": contract.lame_duck,
    },
    {"load term": contract.load_through_term, "load hup": contract.load_through_hup},
]
QUICK = 5.0  # seconds: "at once" for a forced stop, with room for a loaded machine
SLACK = 4.0  # seconds past the grace that a cut stop may take (a worker is killed 1 s late)
CUT = (EOF, RESET)  # a cut connection: closed or reset, never answered


def term(lab: Lab) -> TermDrain:
    outcome = lab.outcome("term")
    assert isinstance(outcome, TermDrain)
    return outcome


def reply(value: Reply | str) -> Reply:
    assert isinstance(value, Reply), f"no response: {value}"
    return value


# -- TERM: everything in flight finishes, nothing new is accepted -------------------------


@rows()
def test_a_request_in_flight_at_term_completes_with_connection_close(lab: Lab) -> None:
    outcome = term(lab)
    answered = reply(outcome.in_flight)
    assert answered.status == 200, answered
    assert answered.says_close, answered.headers
    assert outcome.in_flight_end == EOF


@rows()
def test_graceserve_stopping_is_true_at_the_drain(lab: Lab) -> None:
    """``environ["graceserve.stopping"]()`` / ``server.stopping``, read after the TERM."""
    assert reply(term(lab).in_flight).json()["stopping"] is True


@rows()
def test_a_streamed_response_sees_stopping_and_ends_itself(lab: Lab) -> None:
    """The app's stream says goodbye and ends its (chunked) response: not cut."""
    streamed = reply(term(lab).stream)
    assert streamed.body.endswith(b"bye\n"), streamed.body[-60:]


@rows()
def test_an_idle_keepalive_connection_gets_a_fin_at_the_drain(lab: Lab) -> None:
    """Closed while a request is still in flight (not at the exit), politely: EOF, no reset."""
    assert term(lab).idle_end == EOF


@rows()
def test_a_request_racing_the_drain_on_a_keepalive_connection_is_answered(lab: Lab) -> None:
    """Sent after the listener closed, within the linger the client's rhythm earned:
    answered with ``Connection: close``, then a FIN."""
    outcome = term(lab)
    answered = reply(outcome.race)
    assert answered.status == 200, answered
    assert answered.says_close, answered.headers
    assert outcome.race_end == EOF


@rows()
def test_new_connections_are_refused_once_the_drain_starts(lab: Lab) -> None:
    assert term(lab).refused


@rows()
def test_term_exits_0_when_everything_finished(lab: Lab) -> None:
    outcome = term(lab)
    assert outcome.exit_code == 0, outcome.log
    assert "Traceback" not in outcome.log, outcome.log


@rows()
def test_the_pidfile_and_the_control_socket_are_removed_at_exit(lab: Lab) -> None:
    assert term(lab).leftovers == []


# -- cuts -------------------------------------------------------------------------------


def cut(lab: Lab, name: str) -> Cut:
    outcome = lab.outcome(name)
    assert isinstance(outcome, Cut)
    return outcome


@rows()
def test_the_grace_deadline_cuts_what_is_left_and_exits_4(lab: Lab) -> None:
    outcome = cut(lab, "grace cut")
    assert outcome.exit_code == 4, outcome.log
    assert outcome.client in CUT
    assert outcome.seconds < contract.GRACE_CUT + SLACK, outcome.seconds


@rows()
def test_a_second_term_during_the_drain_cuts_at_once_and_exits_143(lab: Lab) -> None:
    outcome = cut(lab, "second term")
    assert outcome.exit_code == 128 + signal.SIGTERM, outcome.log
    assert outcome.client in CUT
    assert outcome.seconds < QUICK, outcome.seconds


@rows()
def test_quit_cuts_a_request_in_flight_at_once_and_exits_131(lab: Lab) -> None:
    outcome = cut(lab, "quit")
    assert outcome.exit_code == 128 + signal.SIGQUIT, outcome.log
    assert outcome.client in CUT
    assert outcome.seconds < QUICK, outcome.seconds


@rows()
def test_quit_with_nothing_to_cut_exits_0(lab: Lab) -> None:
    assert lab.outcome("quit idle") == 0


# -- the lame duck (--drain-delay) ---------------------------------------------------------


@rows()
def test_during_the_lame_duck_new_clients_are_served_and_healthz_fails(lab: Lab) -> None:
    outcome = lab.outcome("lame duck")
    assert isinstance(outcome, LameDuck)
    assert outcome.healthz[-1:] == [503], outcome.healthz
    assert set(outcome.healthz) <= {200, 503}, outcome.healthz
    assert outcome.stopping[-1:] == [True], outcome.stopping
    assert outcome.exit_code == 0


# -- under load ---------------------------------------------------------------------------


def load_run(lab: Lab, name: str) -> LoadRun:
    outcome = lab.outcome(name)
    assert isinstance(outcome, LoadRun)
    return outcome


@pytest.mark.load
@rows()
def test_term_under_keepalive_load_breaks_no_request(lab: Lab) -> None:
    """Eight clients sending back to back.  An EOF for a client that came back later
    than the shortest linger (0.2 s after its previous request: starved by a machine far
    past its cores) is the README's documented tail, counted apart, not a failure."""
    outcome = load_run(lab, "load term")
    assert outcome.failures == [], (outcome.kinds, outcome.failures[:5], outcome.tail)
    assert outcome.exit_code == 0


@pytest.mark.load
@rows()
def test_a_reload_under_keepalive_load_breaks_no_request(lab: Lab) -> None:
    """As above, through ``ctl graceful``: the old generation drains its connections."""
    outcome = load_run(lab, "load hup")
    assert outcome.failures == [], (outcome.kinds, outcome.failures[:5], outcome.tail)
    assert outcome.exit_code == 0
