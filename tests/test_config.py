"""Unit tests of the command line and its environment variables (graceserve.config).

In-process and quick: ``parse_args`` is given an explicit environment, so the test
process's own ``GRACESERVE_*`` variables never leak in.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import os
import socket
import socketserver
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceserve import (
    GracefulHTTPServer,
    GracefulTCPServer,
    HTTPOptions,
    TCPOptions,
    WSGIOptions,
    __version__,
    serve,
)
from graceserve.config import Config, build_parser, parse_args, parse_bind
from graceserve.demo import DemoHandler
from graceserve.errors import EXIT_USAGE, StartupError, UsageError
from graceserve.http.parse import Limits
from graceserve.process.cpuquota import auto_workers
from graceserve.process.listener import make_server, server_options
from graceserve.settings import DEFAULTS, Settings
from graceserve.wsgi.server import GracefulWSGIServer

NO_DATABASE = settings(database=None, deadline=None, max_examples=200)


# -- parse_bind ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("localhost:80", ("localhost", 80)),
        ("example.internal:443", ("example.internal", 443)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::]:0", ("::", 0)),
        ("[fe80::1%lo]:80", ("fe80::1%lo", 80)),
        ("[::ffff:127.0.0.1]:1", ("::ffff:127.0.0.1", 1)),
        ("  127.0.0.1:8000  ", ("127.0.0.1", 8000)),
        ("127.0.0.1:0080", ("127.0.0.1", 80)),
        (":8000", ("0.0.0.0", 8000)),  # gunicorn's form: every IPv4 interface
    ],
)
def test_parse_bind_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "::1:8000",  # IPv6 needs brackets
        "[::1]",
        "[::1]8000",
        "host:port",
        "host:-1",
        "host:+80",
        "host:8000:1",
        "host: 80",
        "127.0.0.1:123456",  # six digits
        "[]:80",
    ],
)
def test_parse_bind_rejects_malformed(text: str) -> None:
    with pytest.raises(UsageError, match="--bind"):
        parse_bind(text)


@pytest.mark.parametrize("port", [65536, 70000, 99999])
def test_parse_bind_rejects_port_out_of_range(port: int) -> None:
    with pytest.raises(UsageError, match="out of range"):
        parse_bind(f"127.0.0.1:{port}")


def test_parse_bind_unix_socket_path(tmp_path: Any) -> None:
    path = parse_bind(f"unix:{tmp_path}/s.sock")
    assert path == f"{tmp_path}/s.sock"
    relative = parse_bind("unix:run/s.sock")
    assert relative == os.path.join(os.getcwd(), "run", "s.sock")
    with pytest.raises(UsageError):
        parse_bind("unix:")


def test_usage_error_is_a_startup_error_with_exit_code_2() -> None:
    with pytest.raises(StartupError) as caught:
        parse_bind("nonsense")
    assert caught.value.exit_code == EXIT_USAGE == 2


@NO_DATABASE
@given(address=st.ip_addresses(v=4), port=st.integers(0, 65535))
def test_parse_bind_ipv4_round_trip(address: ipaddress.IPv4Address, port: int) -> None:
    assert parse_bind(f"{address}:{port}") == (str(address), port)


@NO_DATABASE
@given(address=st.ip_addresses(v=6), port=st.integers(0, 65535))
def test_parse_bind_ipv6_round_trip(address: ipaddress.IPv6Address, port: int) -> None:
    assert parse_bind(f"[{address}]:{port}") == (str(address), port)


@NO_DATABASE
@given(port=st.integers(65536, 99999))
def test_parse_bind_five_digit_ports_above_range(port: int) -> None:
    with pytest.raises(UsageError, match="out of range"):
        parse_bind(f"[::1]:{port}")


@pytest.mark.slow
@NO_DATABASE
@given(text=st.text(max_size=40))
def test_parse_bind_never_raises_anything_but_usage_error(text: str) -> None:
    try:
        result = parse_bind(text)
    except UsageError:
        return
    if isinstance(result, str):
        assert text.startswith("unix:")
    else:
        host, port = result
        assert host
        assert 0 <= port <= 65535


# -- parse_args: defaults --------------------------------------------------------------


def test_defaults() -> None:
    config = parse_args([], environ={})
    assert config == Config(
        target=None,
        bind=("127.0.0.1", 8000),
        grace=config.grace,
        pidfile=None,
        max_connections=config.max_connections,
        idle_timeout=config.idle_timeout,
        drain_delay=0.0,
        log_level="info",
    )


def test_default_grace_fits_inside_docker_stop() -> None:
    grace = parse_args([], environ={}).grace
    assert 0 < grace < 10.0  # docker stop sends SIGKILL after 10 s


def test_defaults_do_not_throttle_real_use() -> None:
    config = parse_args([], environ={})
    assert config.max_connections is not None
    assert config.max_connections >= 500  # hundreds of keep-alive clients
    assert config.idle_timeout is None or config.idle_timeout >= 30.0


# -- parse_args: every flag, and its environment variable ------------------------------

# (flag, environment variable, given text, Config field, expected value)
OPTIONS: list[tuple[str, str, str, str, Any]] = [
    ("--bind", "GRACESERVE_BIND", "[::1]:9000", "bind", ("::1", 9000)),
    ("--grace", "GRACESERVE_GRACE", "2.5", "grace", 2.5),
    ("--grace", "GRACESERVE_GRACE", "0", "grace", 0.0),
    ("--pidfile", "GRACESERVE_PIDFILE", "/run/gs.pid", "pidfile", "/run/gs.pid"),
    ("--max-connections", "GRACESERVE_MAX_CONNECTIONS", "7", "max_connections", 7),
    ("--idle-timeout", "GRACESERVE_IDLE_TIMEOUT", "1.5", "idle_timeout", 1.5),
    ("--idle-timeout", "GRACESERVE_IDLE_TIMEOUT", "0", "idle_timeout", None),
    ("--drain-delay", "GRACESERVE_DRAIN_DELAY", "0.25", "drain_delay", 0.25),
    ("--min-body-rate", "GRACESERVE_MIN_BODY_RATE", "100", "min_body_rate", 100),
    ("--min-body-rate", "GRACESERVE_MIN_BODY_RATE", "0", "min_body_rate", None),
    ("--log-level", "GRACESERVE_LOG_LEVEL", "DEBUG", "log_level", "debug"),
    ("--log-level", "GRACESERVE_LOG_LEVEL", "warning", "log_level", "warning"),
]
OPTION_IDS = [f"{flag}={text}" for flag, _env, text, _field, _value in OPTIONS]


@pytest.mark.parametrize(("flag", "env", "text", "field", "expected"), OPTIONS, ids=OPTION_IDS)
def test_flag_sets_the_value(flag: str, env: str, text: str, field: str, expected: Any) -> None:
    assert getattr(parse_args([flag, text], environ={}), field) == expected
    assert getattr(parse_args([f"{flag}={text}"], environ={}), field) == expected


@pytest.mark.parametrize(("flag", "env", "text", "field", "expected"), OPTIONS, ids=OPTION_IDS)
def test_environment_variable_sets_the_value(
    flag: str, env: str, text: str, field: str, expected: Any
) -> None:
    assert getattr(parse_args([], environ={env: text}), field) == expected


# A valid value for each variable that differs from OPTIONS' own.
OTHER = {
    "GRACESERVE_BIND": "127.0.0.1:1",
    "GRACESERVE_GRACE": "9",
    "GRACESERVE_PIDFILE": "/elsewhere.pid",
    "GRACESERVE_MAX_CONNECTIONS": "99",
    "GRACESERVE_IDLE_TIMEOUT": "42",
    "GRACESERVE_DRAIN_DELAY": "3",
    "GRACESERVE_MIN_BODY_RATE": "7",
    "GRACESERVE_LOG_LEVEL": "error",
}


@pytest.mark.parametrize(("flag", "env", "text", "field", "expected"), OPTIONS, ids=OPTION_IDS)
def test_flag_wins_over_environment_variable(
    flag: str, env: str, text: str, field: str, expected: Any
) -> None:
    assert getattr(parse_args([flag, text], environ={env: OTHER[env]}), field) == expected


@pytest.mark.parametrize(("flag", "env", "text", "field", "expected"), OPTIONS, ids=OPTION_IDS)
def test_flag_wins_even_over_a_malformed_environment_variable(
    flag: str, env: str, text: str, field: str, expected: Any
) -> None:
    assert getattr(parse_args([flag, text], environ={env: "\0bad\0"}), field) == expected


def test_every_flag_has_an_environment_variable_in_help() -> None:
    text = build_parser().format_help()
    flags = {flag for flag, *_ in OPTIONS}
    for flag in flags:
        env = "GRACESERVE_" + flag.lstrip("-").replace("-", "_").upper()
        assert flag in text
        assert env in text, env
        assert getattr(parse_args([], environ={env: OTHER[env]}), _field(flag)) is not None


def _field(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def test_target_argument_and_environment() -> None:
    assert parse_args(["app:Handler"], environ={}).target == "app:Handler"
    assert parse_args([], environ={"GRACESERVE_TARGET": "env:Handler"}).target == "env:Handler"
    both = parse_args(["app:Handler"], environ={"GRACESERVE_TARGET": "env:Handler"})
    assert both.target == "app:Handler"
    assert parse_args([], environ={"GRACESERVE_TARGET": ""}).target is None


def test_unrelated_environment_is_ignored() -> None:
    environ = {"GRACESERVE": "x", "GRACESERVE_UNKNOWN": "x", "PORT": "", "BIND": "nonsense"}
    assert parse_args([], environ=environ) == parse_args([], environ={})


def test_empty_pidfile_means_none() -> None:
    assert parse_args(["--pidfile", ""], environ={}).pidfile is None
    assert parse_args([], environ={"GRACESERVE_PIDFILE": ""}).pidfile is None


# -- parse_args: bad input ------------------------------------------------------------

BAD = [
    # (argv, environ, the message names)
    (["--grace", "-1"], {}, "--grace"),
    (["--grace=-0.5"], {}, "--grace"),
    (["--grace", "abc"], {}, "--grace"),
    (["--grace", "nan"], {}, "--grace"),
    (["--grace", "inf"], {}, "--grace"),
    (["--grace", ""], {}, "--grace"),
    ([], {"GRACESERVE_GRACE": "abc"}, "GRACESERVE_GRACE"),
    ([], {"GRACESERVE_GRACE": "-1"}, "GRACESERVE_GRACE"),
    ([], {"GRACESERVE_GRACE": "inf"}, "GRACESERVE_GRACE"),
    (["--bind", "nonsense"], {}, "--bind"),
    ([], {"GRACESERVE_BIND": "nonsense"}, "GRACESERVE_BIND"),
    ([], {"GRACESERVE_BIND": "127.0.0.1:70000"}, "GRACESERVE_BIND"),
    (["--max-connections", "0"], {}, "--max-connections"),
    (["--max-connections", "1.5"], {}, "--max-connections"),
    ([], {"GRACESERVE_MAX_CONNECTIONS": "many"}, "GRACESERVE_MAX_CONNECTIONS"),
    (["--idle-timeout", "-2"], {}, "--idle-timeout"),
    ([], {"GRACESERVE_IDLE_TIMEOUT": "soon"}, "GRACESERVE_IDLE_TIMEOUT"),
    (["--drain-delay", "-1"], {}, "--drain-delay"),
    (["--min-body-rate", "-5"], {}, "--min-body-rate"),
    ([], {"GRACESERVE_MIN_BODY_RATE": "fast"}, "GRACESERVE_MIN_BODY_RATE"),
    (["--log-level", "loud"], {}, "--log-level"),
    ([], {"GRACESERVE_LOG_LEVEL": "trace"}, "GRACESERVE_LOG_LEVEL"),
    (["--grace"], {}, "--grace"),
    (["--frobnicate"], {}, "--frobnicate"),
    (["a:B", "c:D"], {}, "c:D"),
]


@pytest.mark.parametrize(("argv", "environ", "names"), BAD, ids=[repr(b[:2]) for b in BAD])
def test_bad_input_is_a_usage_error_naming_its_source(
    argv: list[str], environ: dict[str, str], names: str
) -> None:
    with pytest.raises(UsageError) as caught:
        parse_args(argv, environ=environ)
    message = str(caught.value)
    assert names in message
    assert "\n" not in message  # one line
    assert caught.value.exit_code == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_args(["--version"], environ={})
    assert caught.value.code in (0, None)
    assert capsys.readouterr().out.strip() == f"graceserve {__version__}"


def test_help_documents_signals_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_args(["--help"], environ={})
    assert caught.value.code in (0, None)
    text = capsys.readouterr().out
    for needle in ("TERM", "INT", "HUP", "QUIT", "USR1", "143", "130", "module:Handler"):
        assert needle in text, needle
    for code, meaning in [("0", "drained"), ("2", "usage"), ("3", "start"), ("4", "grace")]:
        assert any(line.split()[:1] == [code] and meaning in line for line in text.splitlines()), (
            code,
            meaning,
        )


# -- one settings object, each default written once ----------------------------------


def test_parse_args_without_input_gives_the_defaults() -> None:
    assert parse_args([], environ={}) == DEFAULTS


def test_every_default_is_the_settings_default() -> None:
    parameters = inspect.signature(serve).parameters
    assert parameters["address"].default == DEFAULTS.bind
    for name in ("grace", "pidfile", "max_connections", "idle_timeout", "drain_delay"):
        assert parameters[name].default == getattr(DEFAULTS, name), name
    assert GracefulHTTPServer.idle_timeout == DEFAULTS.idle_timeout


def test_settings_are_frozen_and_copied_with_changes() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.grace = 1.0  # type: ignore[misc]
    changed = DEFAULTS.but(grace=1.0)
    assert (changed.grace, DEFAULTS.grace) == (1.0, 8.0)


def _hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "0")])
    return []


def _run_settings(kind: str) -> Settings:
    return DEFAULTS.but(
        bind=("127.0.0.1", 0),
        max_connections=7,
        idle_timeout=3.5,
        grace=2.0,
        min_body_rate=250,
        health_path=None if kind == "tcp" else "/livez",  # refused for a TCP target
        root_path="/app",
        limit_request_line=100,
        limit_request_fields=5,
        limit_request_field_size=200,
        max_body_size=1000,
        forwarded_allow_ips="10.0.0.0/8",
        workers=2,
    )


@pytest.mark.parametrize("kind", ["http", "tcp", "wsgi"])
def test_a_runs_settings_give_each_server_kind_its_options(kind: str) -> None:
    server_class = {
        "http": GracefulHTTPServer, "tcp": GracefulTCPServer, "wsgi": GracefulWSGIServer
    }[kind]  # fmt: skip
    options = server_options(_run_settings(kind), server_class)
    if kind == "tcp":  # --idle-timeout is a TCP server's input timeout: one name, one meaning
        assert options == TCPOptions(max_connections=7, input_timeout=3.5)
        return
    http = HTTPOptions(
        max_connections=7,
        idle_timeout=3.5,
        min_body_rate=250,
        drain_linger_max=0.5,  # a quarter of the grace
        health_path="/livez",
        limit_request_line=100,
        limit_request_fields=5,
        limit_request_field_size=200,
        max_body_size=1000,
        forwarded_allow_ips="10.0.0.0/8",
    )
    if kind == "http":
        assert options == http
    else:  # --workers 2: another process serves the app too (PEP 3333)
        assert options == WSGIOptions(**vars(http), root_path="/app", multiprocess=True)


@pytest.mark.parametrize("kind", ["http", "tcp", "wsgi"])
def test_the_server_a_run_builds_has_its_options_in_force(kind: str) -> None:
    target: Any = {
        "http": DemoHandler,
        "tcp": socketserver.StreamRequestHandler,
        "wsgi": _hello_app,
    }[kind]
    settings = _run_settings(kind)
    server = make_server(target, settings)
    try:
        assert server.options == server_options(settings, type(server))
        assert server.max_connections == 7
        if kind == "tcp":
            assert server.input_timeout == 3.5
            return
        assert isinstance(server, GracefulHTTPServer)
        assert (server.idle_timeout, server.min_body_rate, server.drain_linger_max) == (
            3.5, 250, 0.5,
        )  # fmt: skip
        assert server.health_path == "/livez"
        assert server.limits == Limits(request_line=100, fields=5, field_size=200, body=1000)
        assert server.trust.trusts("10.1.2.3")
        assert not server.trust.trusts("127.0.0.1")
        assert (server.ssl_context, server.access_logger) == (None, None)
        if isinstance(server, GracefulWSGIServer):
            assert server.base_environ["SCRIPT_NAME"] == "/app"
            assert server.base_environ["wsgi.multiprocess"] is True
    finally:
        server.server_close()


def test_options_a_server_does_not_read_are_an_error_not_dropped() -> None:
    with pytest.raises(TypeError, match="no option 'idle_timeout'"):
        GracefulTCPServer(
            ("127.0.0.1", 0),
            socketserver.BaseRequestHandler,
            bind_and_activate=False,
            options=HTTPOptions(idle_timeout=1.0),
        )
    with pytest.raises(TypeError, match="takes HTTPOptions, not TCPOptions"):
        GracefulHTTPServer(("127.0.0.1", 0), DemoHandler, False, options=TCPOptions())


def test_class_attributes_are_the_default_options_and_explicit_options_win() -> None:
    class Quick(GracefulHTTPServer):
        idle_timeout = 5.0
        health_path: str | None = "/up"

    server = Quick(("127.0.0.1", 0), DemoHandler, bind_and_activate=False)
    try:
        assert server.options == HTTPOptions(idle_timeout=5.0, health_path="/up")
        assert (server.idle_timeout, server.health_path) == (5.0, "/up")
    finally:
        server.server_close()
    given = HTTPOptions(idle_timeout=9.0, limit_request_fields=3)
    server = Quick(("127.0.0.1", 0), DemoHandler, bind_and_activate=False, options=given)
    try:
        assert server.options is given
        assert (server.idle_timeout, server.health_path) == (9.0, None)
        assert server.limits.fields == 3
    finally:
        server.server_close()


def test_a_server_made_from_a_socket_has_its_options_in_force_before_any_request() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    options = WSGIOptions(root_path="app/", multiprocess=True, limit_request_fields=4)
    app: Any = _hello_app  # the app takes the handler class's place
    server = GracefulWSGIServer.from_socket(listener, app, options)
    try:
        assert server.options is options
        assert server.limits.fields == 4
        assert server.base_environ["SCRIPT_NAME"] == "/app"  # normalised, not at a first request
        assert server.base_environ["wsgi.multiprocess"] is True
    finally:
        server.server_close()


def test_worker_flags_and_their_environment_variables() -> None:
    from graceserve.errors import UsageError as _UsageError

    settings = parse_args(
        [
            "--workers",
            "3",
            "--preload",
            "--worker-timeout",
            "0",
            "--max-requests",
            "100",
            "--max-requests-jitter",
            "10",
        ],
        {},
    )
    assert (settings.workers, settings.preload, settings.worker_timeout) == (3, True, None)
    assert (settings.max_requests, settings.max_requests_jitter) == (100, 10)
    auto = parse_args(["--workers", "auto"], {})
    assert auto.workers == auto_workers()  # the affinity, capped by a cgroup CPU quota
    env = parse_args(
        [], {"GRACESERVE_WORKERS": "2", "GRACESERVE_PRELOAD": "yes", "GRACESERVE_MAX_REQUESTS": "0"}
    )
    assert (env.workers, env.preload, env.max_requests) == (2, True, None)
    assert parse_args([], {}).workers == 1
    assert parse_args([], {"GRACESERVE_PRELOAD": "0"}).preload is False
    for bad in (["--workers", "0"], ["--workers", "many"], ["--max-requests", "-1"]):
        with pytest.raises(_UsageError):
            parse_args(bad, {})
    with pytest.raises(_UsageError, match="GRACESERVE_PRELOAD"):
        parse_args([], {"GRACESERVE_PRELOAD": "maybe"})


def test_worker_timeout_needs_workers_and_start_timeout_must_be_positive() -> None:
    """One process has no watchdog: a --worker-timeout asked for with one worker is a
    usage error, not silently ignored (0, "off", is fine)."""
    for argv, env in (
        (["--worker-timeout", "5"], {}),
        ([], {"GRACESERVE_WORKER_TIMEOUT": "5"}),
        (["--worker-timeout", "5", "--workers", "1"], {}),
    ):
        with pytest.raises(UsageError, match="--worker-timeout needs --workers 2 or more"):
            parse_args(argv, env)
    assert parse_args(["--worker-timeout", "0"], {}).worker_timeout is None
    assert parse_args(["--worker-timeout", "5", "--workers", "2"], {}).worker_timeout == 5.0
    assert parse_args(["--start-timeout", "3"], {}).start_timeout == 3.0
    assert parse_args([], {"GRACESERVE_START_TIMEOUT": "7"}).start_timeout == 7.0
    for bad in ("0", "-1", "soon"):
        with pytest.raises(UsageError, match="--start-timeout"):
            parse_args(["--start-timeout", bad], {})


# -- gunicorn's names, the platform's variables, the config file (issue 21) ----------------


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["-b", "[::1]:9000"], "bind", ("::1", 9000)),
        (["-b", ":9000"], "bind", ("0.0.0.0", 9000)),
        (["-w", "3"], "workers", 3),
        (["-w", "3", "-t", "12"], "worker_timeout", 12.0),
        (["-w", "3", "--timeout", "0"], "worker_timeout", None),
        (["--keep-alive", "4"], "idle_timeout", 4.0),
        (["--graceful-timeout", "3"], "grace", 3.0),
        (["-p", "/run/a.pid"], "pidfile", "/run/a.pid"),
        (["--pid", "/run/a.pid"], "pidfile", "/run/a.pid"),
        (["-m", "007"], "umask", 0o007),
        (["--umask", "0o027"], "umask", 0o027),
        (["-e", "A=1", "--env", "B=x=y", "-e", "A=2"], "env", (("A", "2"), ("B", "x=y"))),
    ],
)
def test_gunicorn_flags_set_the_same_setting(argv: list[str], field: str, expected: Any) -> None:
    assert getattr(parse_args(argv, environ={}), field) == expected


def test_abbreviated_long_flags_are_refused() -> None:
    for argv in (["--work", "2"], ["--grac", "1"], ["--keep", "1"]):
        with pytest.raises(UsageError, match="unrecognized arguments"):
            parse_args(argv, environ={})


def test_port_and_web_concurrency_yield_to_flags_variables_and_the_file(tmp_path: Any) -> None:
    platform = {"PORT": "9001", "WEB_CONCURRENCY": "3"}
    config = parse_args([], environ=platform)
    assert (config.bind, config.workers) == (("0.0.0.0", 9001), 3)
    flags = parse_args(["-b", "127.0.0.1:1", "-w", "2"], environ=platform)
    assert (flags.bind, flags.workers) == (("127.0.0.1", 1), 2)
    variables = {**platform, "GRACESERVE_BIND": "127.0.0.1:2", "GRACESERVE_WORKERS": "4"}
    assert (parse_args([], environ=variables).bind, parse_args([], environ=variables).workers) == (
        ("127.0.0.1", 2),
        4,
    )
    conf = tmp_path / "conf.py"
    conf.write_text("bind = '127.0.0.1:3'\nworkers = 5\n")
    filed = parse_args(["-c", str(conf)], environ=platform)
    assert (filed.bind, filed.workers) == (("127.0.0.1", 3), 5)
    for bad in ({"PORT": "http"}, {"PORT": "70000"}, {"WEB_CONCURRENCY": "0"}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            parse_args([], environ=bad)
    assert parse_args([], environ={"PORT": " ", "WEB_CONCURRENCY": ""}) == parse_args([], {})


def test_precedence_flag_variable_file_default(tmp_path: Any) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("grace = 3\nmax_connections = 70\nlog_level = 'debug'\n")
    environ = {"GRACESERVE_CONFIG": str(conf), "GRACESERVE_GRACE": "4"}
    config = parse_args(["--max-connections", "80"], environ=environ)
    assert (config.max_connections, config.grace, config.log_level) == (80, 4.0, "debug")
    assert config.idle_timeout == DEFAULTS.idle_timeout
    assert config.config == str(conf)


def test_bind_is_repeatable_in_order() -> None:
    config = parse_args(
        ["-b", "127.0.0.1:1", "--bind=unix:/tmp/x.sock", "-b", "[::1]:2", "-b", ":3"], environ={}
    )
    assert config.bind == ("127.0.0.1", 1)
    assert config.extra_binds == ("/tmp/x.sock", ("::1", 2), ("0.0.0.0", 3))
    assert config.binds == (config.bind, *config.extra_binds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1,unix:/tmp/x.sock", (("127.0.0.1", 1), "/tmp/x.sock")),
        (" [::1]:1  127.0.0.1:2 ", (("::1", 1), ("127.0.0.1", 2))),
        ("127.0.0.1:1, [::1]:1,\n:2", (("127.0.0.1", 1), ("::1", 1), ("0.0.0.0", 2))),
    ],
)
def test_the_bind_variable_takes_several_separated_by_commas_or_spaces(
    text: str, expected: tuple[object, ...]
) -> None:
    assert parse_args([], environ={"GRACESERVE_BIND": text}).binds == expected


def test_flags_win_over_the_bind_variable_as_a_whole() -> None:
    config = parse_args(["-b", "127.0.0.1:5"], environ={"GRACESERVE_BIND": "a:1,b:2"})
    assert config.binds == (("127.0.0.1", 5),)


@pytest.mark.parametrize(
    ("argv", "environ", "words"),
    [
        (["-b", "127.0.0.1:1", "-b", "127.0.0.1:1"], {}, ["-b 127.0.0.1:1", "given twice"]),
        (["-b", "unix:/tmp/x", "--bind", "unix:/tmp/x"], {}, ["unix:/tmp/x", "given twice"]),
        ([], {"GRACESERVE_BIND": "[::1]:1,[::1]:1"}, ["GRACESERVE_BIND [::1]:1", "twice"]),
        ([], {"GRACESERVE_BIND": " , "}, ["GRACESERVE_BIND", "names no address"]),
        ([], {"GRACESERVE_BIND": "127.0.0.1:1,nope"}, ["GRACESERVE_BIND 'nope'", "HOST:PORT"]),
    ],
)
def test_a_bad_or_repeated_bind_is_one_line(
    argv: list[str], environ: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(UsageError) as caught:
        parse_args(argv, environ=environ)
    assert "\n" not in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_port_zero_may_be_given_twice_each_picks_its_own() -> None:
    config = parse_args(["-b", "127.0.0.1:0", "-b", "127.0.0.1:0"], environ={})
    assert config.binds == (("127.0.0.1", 0), ("127.0.0.1", 0))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--keep-alive", "0"], "--keep-alive 0: gunicorn turns keep-alive off"),
        (["-e", "NOEQUALS"], "is not NAME=VALUE"),
        (["-e", "=x"], "is not NAME=VALUE"),
        (["--env", "GRACESERVE_GRACE=1"], "not --env"),
        (["--umask", "8"], "octal"),
        (["--umask", "1000"], "000 to 777"),
        (["--chdir", "/nonexistent/graceserve"], "no such directory"),
        (["-c", "/nonexistent/graceserve.conf.py"], "No such file"),
    ],
)
def test_gunicorn_forms_refused_in_one_line(argv: list[str], words: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_args(argv, environ={})
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_relative_paths_are_relative_to_where_graceserve_started(tmp_path: Any) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "conf.py").write_text("pidfile = 'run/a.pid'\n")
    argv = ["-c", "conf.py", "--chdir", "site", "-b", "unix:s.sock", "--access-log", "-"]
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        config = parse_args(argv, environ={})
    finally:
        os.chdir(here)
    assert config.chdir == str(tmp_path / "site")
    assert config.pidfile == str(tmp_path / "run" / "a.pid")
    assert config.bind == str(tmp_path / "s.sock")
    assert config.access_log == "-"
    # A worker process starts in --chdir's directory; it is told where its supervisor started.
    worker = {"GRACESERVE_WORKER": "1", "GRACESERVE_LAUNCH_DIR": str(tmp_path)}
    os.chdir(tmp_path / "site")
    try:
        assert parse_args(argv, environ=worker) == config
    finally:
        os.chdir(here)


def test_a_python_config_file_names_its_settings_as_the_flags(tmp_path: Any) -> None:
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "import multiprocessing\n"
        "from os import path\n"
        "_private = 1\n"
        "bind = ['[::1]:0']\n"
        "workers = 2\n"
        "timeout = 9\n"
        "keep_alive = 5\n"
        "preload = True\n"
        "umask = 0o007\n"
        "max_requests = 0\n"
        "pidfile = None\n"
        "env = 'A=1'\n"
        "target = 'app:app'\n"
        "def helper():\n    return multiprocessing.cpu_count()\n"
    )
    config = parse_args(["-c", str(conf)], environ={})
    assert config.bind == ("::1", 0)
    assert (config.workers, config.worker_timeout, config.idle_timeout) == (2, 9.0, 5.0)
    assert (config.preload, config.umask, config.max_requests) == (True, 0o007, None)
    assert (config.pidfile, config.env, config.target) == (None, (("A", "1"),), "app:app")
    assert parse_args(["-c", str(conf), "other:app"], environ={}).target == "other:app"


def test_gunicorn_conf_py_names_that_mean_the_same_are_read(tmp_path: Any) -> None:
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "wsgi_app = 'app:app'\nkeepalive = 5\ngraceful_timeout = 6\npreload_app = True\n"
        "raw_env = ['A=1']\nloglevel = 'warning'\npid = 'a.pid'\nworkers = 2\ntimeout = 7\n"
    )
    config = parse_args(["-c", str(conf)], environ={})
    assert (config.target, config.idle_timeout, config.grace) == ("app:app", 5.0, 6.0)
    assert (config.preload, config.env, config.log_level) == (True, (("A", "1"),), "warning")
    assert (config.pidfile, config.workers, config.worker_timeout) == (
        os.path.join(os.getcwd(), "a.pid"),
        2,
        7.0,
    )


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("accesslog = '-'\n", "accesslog: not a graceserve setting (graceserve's: access_log,"),
        ("worker_connections = 5\n", "(graceserve's: max_connections)"),
        ("keepalive = 0\n", "keepalive 0: gunicorn turns keep-alive off"),
        ("loglevel = 'critical'\n", "loglevel: 'critical' is not one of"),
        ("worker_class = 'gevent'\n", "worker_class: not a graceserve setting"),
        ("def on_starting(server):\n    pass\n", "on_starting is a gunicorn server hook"),
        ("workers = [2]\n", "workers: [2] is not a string or a number"),
        ("env = [1]\n", "env: expected a string or a list of strings"),
        ("keep_alive = 0\n", "keep_alive 0: gunicorn turns keep-alive off"),
        ("import sys\nsys.exit(3)\n", "line 2: SystemExit: 3"),
        ("1/0\n", "line 1: ZeroDivisionError: division by zero"),
        ("bind = (\n", "line 1"),
        ("workers = 0\n", "workers: '0' must be 1 or more"),
    ],
)
def test_a_bad_python_config_file_is_one_line(tmp_path: Any, source: str, words: str) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text(source)
    with pytest.raises(UsageError) as caught:
        parse_args(["--config", str(conf)], environ={})
    message = str(caught.value)
    assert str(conf) in message
    assert words in message
    assert "\n" not in message


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is 3.11+ (3.10: see below)")
def test_a_toml_config_file(tmp_path: Any) -> None:
    conf = tmp_path / "graceserve.toml"
    conf.write_text('bind = "127.0.0.1:0"\nworkers = 2\nkeep-alive = 3\nenv = ["A=1"]\n')
    config = parse_args(["-c", str(conf)], environ={})
    assert (config.bind, config.workers, config.idle_timeout) == (("127.0.0.1", 0), 2, 3.0)
    assert config.env == (("A", "1"),)
    for bad, words in (("[graceserve]\nworkers = 2\n", "is a table"), ("workers = \n", "TOML")):
        conf.write_text(bad)
        with pytest.raises(UsageError, match=words):
            parse_args(["-c", str(conf)], environ={})


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="3.10 only")
def test_a_toml_config_file_on_3_10_is_one_line(tmp_path: Any) -> None:
    conf = tmp_path / "graceserve.toml"
    conf.write_text("workers = 2\n")
    with pytest.raises(UsageError, match="TOML needs Python 3"):
        parse_args(["-c", str(conf)], environ={})


@pytest.mark.parametrize(
    "source",
    ['bind = ["127.0.0.1:1", "unix:s.sock"]\n', 'bind = "127.0.0.1:1, unix:s.sock"\n'],
)
def test_a_config_file_binds_several_addresses(tmp_path: Any, source: str) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text(source)
    config = parse_args(["-c", str(conf)], environ={})
    assert config.binds == (("127.0.0.1", 1), os.path.abspath("s.sock"))  # the launch dir's
    # The variable, then the flags, replace the file's list as a whole.
    config = parse_args(["-c", str(conf)], environ={"GRACESERVE_BIND": "127.0.0.1:2"})
    assert config.binds == (("127.0.0.1", 2),)


def test_threads_sizes_the_wsgi_pool_and_zero_is_a_thread_per_connection() -> None:
    assert parse_args([], environ={}).threads == 64
    assert parse_args(["--threads", "8"], environ={}).threads == 8
    assert parse_args([], environ={"GRACESERVE_THREADS": "0"}).threads == 0
    with pytest.raises(UsageError, match="--threads"):
        parse_args(["--threads", "-1"], environ={})
