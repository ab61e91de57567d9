"""Shared fixtures: a real graceserve process, and a check that tests leave no trace.

The process launcher, the readiness parser, ``/proc`` reading, raw HTTP and
waiting live in the ``testsupport`` package (shared with bench/); tests import
them from there, never from this module or from one another.

Rules for every test in this suite: real sockets on 127.0.0.1 only, no sleeps
as synchronisation (wait on events, on the lines the server prints, or poll
with a deadline), every socket with a timeout, every loop bounded, and only
processes we started are signalled (by pid or process group).

What runs: a bare ``pytest`` runs the fast suite, every test without a
long-running marker (``LONG_MARKERS``), which a newcomer finishes in under two
minutes on two cores (``slow``: a test that spends seconds waiting on real
time; each capability keeps a quick test in the fast suite).  ``pytest --all``
(or ``GRACESERVE_TESTS=all``) runs everything, as CI does; so does any run that
picks its tests itself, with ``-m`` or ``-k`` or by naming files or test ids.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

from testsupport.matrix import Lab, lab_fixture_body
from testsupport.pki import make_pki
from testsupport.process import ServerProcess
from testsupport.serve import TlsFiles
from testsupport.waiting import wait_until

WATCHED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)
LONG_MARKERS = ("load", "slow", "matrix", "container", "systemd")
"""Markers of the tests a bare ``pytest`` leaves out (``pytest --all`` runs them)."""
ALL_VARIABLE = "GRACESERVE_TESTS"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all",
        action="store_true",
        default=False,
        help=f"run the whole suite, also the tests marked {', '.join(LONG_MARKERS)} "
        f"(also: {ALL_VARIABLE}=all); a bare run leaves them out",
    )


def _runs_everything(config: pytest.Config) -> bool:
    """True unless this is a bare run of the default test paths."""
    if config.getoption("--all") or os.environ.get(ALL_VARIABLE) == "all":
        return True
    if config.getoption("-m") or config.getoption("-k"):
        return True
    testpaths = {str(config.rootpath / path) for path in config.getini("testpaths")}
    named = {str((config.invocation_params.dir / arg).resolve()) for arg in config.args}
    return bool(named - testpaths)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A bare run deselects the long-running tests (see the module's docstring)."""
    if _runs_everything(config):
        return
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        long = any(item.get_closest_marker(name) for name in LONG_MARKERS)
        (left_out if long else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> str:
    if _runs_everything(config):
        return "graceserve: the whole selection runs"
    return (
        f"graceserve: the fast suite (tests marked {', '.join(LONG_MARKERS)} are left out; "
        "pytest --all runs everything)"
    )


def pytest_configure(config: pytest.Config) -> None:
    """Run under ``nohup`` (or anything that leaves a signal ignored), this process
    and every server it starts would inherit an ignored HUP, and graceserve keeps a
    HUP ignored on purpose (``nohup``'s contract): the reload tests could not reload.
    The suite tests graceserve, not its parent: the stop signals start at their
    defaults."""
    for signum in WATCHED_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _leaves_process_state_alone() -> Iterator[None]:
    """Signal handlers and threads are back to what they were after each test."""
    handlers = {signum: signal.getsignal(signum) for signum in WATCHED_SIGNALS}
    threads = set(threading.enumerate())
    yield
    assert {signum: signal.getsignal(signum) for signum in WATCHED_SIGNALS} == handlers
    wait_until(
        lambda: not [t for t in threading.enumerate() if t not in threads and t.is_alive()],
        timeout=10.0,
        what="threads started by the test to end",
    )


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def graceserve_log() -> Iterator[list[str]]:
    """Messages logged on the "graceserve" logger during the test (whatever its propagation)."""
    logger = logging.getLogger("graceserve")
    handler = _Messages()
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server(args, env=..., cwd=...)``; every process is killed at teardown."""
    started: list[ServerProcess] = []

    def start(args: list[str] | None = None, **kwargs: object) -> ServerProcess:
        process = ServerProcess(list(args or []), **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# -- the contract matrix (tests/test_matrix_*.py) -----------------------------------------


@pytest.fixture(scope="session")
def matrix_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A server certificate (CN graceserve-matrix) and a client context trusting its CA."""
    pki = make_pki(tmp_path_factory.mktemp("matrix-pki"))
    cert, key = pki.issue("server", "graceserve-matrix")
    return TlsFiles(cert, key, pki.client_context())


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest, matrix_tls: TlsFiles) -> Iterator[Lab]:
    """One combination (kind x mode) of the contract matrix: every scenario the selected
    rows read (their modules' ``PHASES``), run at once; parametrised by
    ``testsupport.matrix.rows``."""
    yield from lab_fixture_body(request, matrix_tls)
