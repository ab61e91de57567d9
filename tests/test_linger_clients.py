"""Real HTTP clients with a periodic think time through SIGTERM: no connection breaks.

Why these exist: a close of an idle keep-alive connection races a client that
is about to send, and clients whose think time sits near a fixed linger lose
(issue 11 saw 137 of 180 ``http.client`` connections broken, and a few with
requests, urllib3 and httpx).  The linger now follows each connection's own
rhythm, so a periodic client's next request is answered with
``Connection: close`` instead of racing a FIN.  Each test runs one round of
``bench/linger.py`` (40 connections, a request every 0.19-0.23 s, SIGTERM once
all are warm) with one client library, no retries, and requires every
connection to end on a response that said close, and exit code 0.

Synchronisation: the round waits for every connection to have sent its warm-up
requests (a semaphore), and for every client thread and the server to end.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # a client's rhythm of seconds


@pytest.fixture(scope="module")
def linger() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("linger")
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("client", ["http.client", "requests", "urllib3", "httpx"])
def test_periodic_keepalive_clients_lose_no_connection_at_sigterm(
    linger: ModuleType, client: str
) -> None:
    if client != "http.client":
        pytest.importorskip(client)
    result = linger.one_round(client, connections=40, period=(0.19, 0.23))

    broken = [f"{o.error} ({o.ok} ok)" for o in result.broken]
    assert broken == [], f"{len(broken)} broken:\n" + "\n".join(broken) + result.server_output
    assert all(o.closed_cleanly for o in result.outcomes), result.outcomes
    assert result.exit_code == 0, result.server_output
