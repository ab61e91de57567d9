"""TLS in every mode: the certificate served, a clear answer to plain HTTP, the drain and the
idle timeout over TLS, load through a stop.

Rows of the contract matrix (README: "TLS", "The drain is the same over TLS"),
for a handler and a WSGI app in every mode, served with ``--certfile`` and
``--keyfile`` (a test CA; the client verifies the certificate).  The
experiments are the plain ones of ``testsupport.contract`` with TLS on.
"""

from __future__ import annotations

import functools

import pytest

from testsupport import contract
from testsupport.contract import IdleProbes, LoadRun, TermDrain, TlsServed
from testsupport.matrix import Lab, rows
from testsupport.rawhttp import EOF, Reply

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(300)]

PHASES = [
    {
        "tls certificate": contract.tls_certificate,
        "tls term": functools.partial(contract.term_drain, tls=True),
        "tls idle": functools.partial(contract.idle_timeout, tls=True),
    },
    {"tls load term": functools.partial(contract.load_through_term, tls=True)},
]


def served(lab: Lab) -> TlsServed:
    outcome = lab.outcome("tls certificate")
    assert isinstance(outcome, TlsServed)
    return outcome


def term(lab: Lab) -> TermDrain:
    outcome = lab.outcome("tls term")
    assert isinstance(outcome, TermDrain)
    return outcome


def idle(lab: Lab) -> IdleProbes:
    outcome = lab.outcome("tls idle")
    assert isinstance(outcome, IdleProbes)
    return outcome


@rows()
def test_https_serves_the_configured_certificate(lab: Lab) -> None:
    outcome = served(lab)
    assert (outcome.status, outcome.common_name) == (200, "graceserve-matrix")


@rows()
def test_plain_http_on_the_tls_port_gets_a_clear_400_then_a_close(lab: Lab) -> None:
    outcome = served(lab)
    assert isinstance(outcome.plain, Reply), outcome.plain
    assert outcome.plain.status == 400
    assert b"https" in outcome.plain.body, outcome.plain.body
    assert outcome.plain_end == EOF


# -- the drain over TLS ------------------------------------------------------------------


@rows()
def test_over_tls_a_request_in_flight_at_term_completes_with_connection_close(lab: Lab) -> None:
    outcome = term(lab)
    assert isinstance(outcome.in_flight, Reply), outcome.in_flight
    assert (outcome.in_flight.status, outcome.in_flight.says_close) == (200, True)
    assert outcome.in_flight_end == EOF


@rows()
def test_over_tls_an_idle_keepalive_connection_is_closed_at_the_drain(lab: Lab) -> None:
    """close_notify, then a FIN: the client reads a clean end, never a reset."""
    assert term(lab).idle_end == EOF


@rows()
def test_over_tls_a_request_racing_the_drain_is_answered(lab: Lab) -> None:
    outcome = term(lab)
    assert isinstance(outcome.race, Reply), outcome.race
    assert (outcome.race.status, outcome.race.says_close) == (200, True)
    assert outcome.race_end == EOF


@rows()
def test_over_tls_a_streamed_response_sees_stopping_and_ends_itself(lab: Lab) -> None:
    stream = term(lab).stream
    assert isinstance(stream, Reply), stream
    assert stream.body.endswith(b"bye\n"), stream.body[-60:]


@rows()
def test_over_tls_new_connections_are_refused_once_the_drain_starts(lab: Lab) -> None:
    assert term(lab).refused


@rows()
def test_over_tls_term_exits_0_when_everything_finished(lab: Lab) -> None:
    outcome = term(lab)
    assert outcome.exit_code == 0, outcome.log


# -- the idle timeout over TLS ------------------------------------------------------------


@rows()
def test_over_tls_idle_timeout_closes_an_idle_keepalive_connection(lab: Lab) -> None:
    probe = idle(lab).idle
    assert probe.ended == EOF, probe
    assert probe.seconds > contract.IDLE_TIMEOUT / 2, probe


@rows()
def test_over_tls_idle_timeout_closes_a_client_that_never_starts_the_handshake(lab: Lab) -> None:
    """The handshake is timed like a request head that is still arriving."""
    probe = idle(lab).silent
    assert probe is not None
    assert probe.ended == EOF, probe


@rows()
def test_over_tls_idle_timeout_closes_a_stalled_request_head(lab: Lab) -> None:
    probe = idle(lab).head
    closed = probe.ended == EOF or (isinstance(probe.ended, Reply) and probe.ended.status == 408)
    assert closed, probe


# -- load -------------------------------------------------------------------------------


@pytest.mark.load
@rows()
def test_over_tls_term_under_keepalive_load_breaks_no_request(lab: Lab) -> None:
    outcome = lab.outcome("tls load term")
    assert isinstance(outcome, LoadRun)
    assert outcome.failures == [], (outcome.kinds, outcome.failures[:5], outcome.tail)
    assert outcome.exit_code == 0
