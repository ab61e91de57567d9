"""gunicorn's command line, typed at ``python -m graceserve``: real processes, real sockets.

What a gunicorn user types (``-b``, ``-w``, ``-t``, ``--keep-alive``, ``--chdir``,
``--env``, ``--umask``, ``-c``, ``--check-config``, ``$PORT``, ``$WEB_CONCURRENCY``)
either means what it means there, or is refused with one line and exit code 2.
The parsing itself (precedence, every error) is in ``tests/test_config.py``; here
each form is started as a user would start it.  Only loopback addresses are bound:
``:PORT`` and ``$PORT`` (every interface) are checked with ``--check-config``,
which binds nothing.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testsupport.process import ServerProcess, child_env
from testsupport.rawhttp import EOF, Connection, get

StartServer = Callable[..., ServerProcess]

APP = """\
import os

GREETING = os.environ.get("GREETING", "unset")  # read at import: --env comes first
HOME = os.getcwd()  # at import: --chdir comes first


def app(environ, start_response):
    body = f"{GREETING} {HOME}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> (
    subprocess.CompletedProcess[str]
):  # fmt: skip
    """``python -m graceserve ARGS`` that is expected to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "graceserve", *args], cwd=cwd, env=child_env(env),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("graceserve: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """``tmp_path/site/hello.py`` (the app); the tests run from ``tmp_path``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.py").write_text(APP)
    return site


# -- -b, -w, -t, --keep-alive, $PORT, $WEB_CONCURRENCY -------------------------------------


def test_short_flags_serve_as_gunicorn_means_them(start_server: StartServer) -> None:
    server = start_server(["-b", "127.0.0.1:0", "-w", "2", "-t", "20", "--keep-alive", "5"])
    address = server.wait_ready(timeout=30)
    assert "2 workers" in server.output
    assert get(address, "/")[0] == 200


def test_the_same_bind_twice_is_refused_not_silently_dropped(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    result = run_cli("-b", "127.0.0.1:0", "--bind", f"unix:{sock}", "-b", f"unix:{sock}")
    assert_one_line_usage_error(result, "given twice", f"unix:{sock}")
    assert not sock.exists()


def test_several_binds_are_checked_and_named_by_check_config(app_dir: Path) -> None:
    sock = app_dir / "s.sock"
    result = run_cli("hello:app", "--check-config", "-b", "127.0.0.1:1", "-b", "unix:s.sock",
                     cwd=app_dir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"on 127.0.0.1:1 and unix:{sock}, 1 worker" in result.stdout
    assert not sock.exists()  # nothing was bound


@pytest.mark.slow
def test_keep_alive_closes_an_idle_connection_after_that_many_seconds(
    start_server: StartServer,
) -> None:
    server = start_server(["-b", "127.0.0.1:0", "--keep-alive", "1"])
    address = server.wait_ready()
    with Connection(address) as conn:
        conn.request()
        assert conn.read_reply().status == 200
        started = time.monotonic()
        assert conn.ending(timeout=10) == EOF
        assert 0.5 < time.monotonic() - started < 8


def test_web_concurrency_sets_the_workers_and_port_yields_to_a_flag(
    start_server: StartServer,
) -> None:
    # PORT=1 would be refused (privileged): the flag must win over it.
    server = start_server(["-b", "127.0.0.1:0"], env={"WEB_CONCURRENCY": "2", "PORT": "1"})
    address = server.wait_ready(timeout=30)
    assert "2 workers" in server.output
    assert get(address, "/")[0] == 200


@pytest.mark.slow
def test_port_and_the_port_form_listen_on_every_interface() -> None:
    result = run_cli("--check-config", env={"PORT": "8123"})
    assert result.returncode == 0, result.stderr
    assert "on 0.0.0.0:8123, 1 worker" in result.stdout
    result = run_cli("--check-config", "-b", ":8124", env={"PORT": "8123"})
    assert "on 0.0.0.0:8124" in result.stdout
    result = run_cli("--check-config", env={"PORT": "80x"})
    assert_one_line_usage_error(result, "PORT")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--work", "2"], ["unrecognized arguments: --work"]),  # no abbreviations
        (["--keep-alive", "0"], ["--keep-alive 0", "--idle-timeout 0"]),
        (["-t", "30"], ["--workers 2 or more"]),  # one process has no watchdog
        (["-w", "0"], ["-w"]),
        (["-b", "127.0.0.1"], ["-b", "HOST:PORT"]),
    ],
)
def test_gunicorn_forms_without_a_meaning_here_are_refused_in_one_line(
    args: list[str], words: list[str]
) -> None:
    assert_one_line_usage_error(run_cli(*args), *words)


# -- --chdir, --env ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_chdir_and_env_apply_before_the_target_is_imported(
    start_server: StartServer, app_dir: Path, workers: str
) -> None:
    server = start_server(
        ["hello:app", "-b", "127.0.0.1:0", "-w", workers, "--chdir", "site",
         "-e", "GREETING=hi", "--env", "OTHER=x=y"],
        cwd=app_dir.parent,
    )  # fmt: skip
    address = server.wait_ready(timeout=30)
    status, _headers, body = get(address, "/")
    assert status == 200
    assert body.decode() == f"hi {app_dir}"


def test_chdir_to_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    result = run_cli("hello:app", "--chdir", "nowhere", cwd=tmp_path)
    assert_one_line_usage_error(result, "--chdir", str(tmp_path / "nowhere"))


# -- unix sockets: --umask -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("umask", "mode"), [(None, 0o600), ("007", 0o770), ("0", 0o777)])
def test_umask_sets_the_unix_socket_mode(
    start_server: StartServer, tmp_path: Path, umask: str | None, mode: int
) -> None:
    path = tmp_path / "app.sock"
    server = start_server(["-b", f"unix:{path}", *(["--umask", umask] if umask else [])])
    ready = server.wait_readiness()
    assert ready.path == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


# -- -c/--config, --check-config -----------------------------------------------------------


def test_a_python_config_file_as_gunicorn_conf_py(start_server: StartServer, app_dir: Path) -> None:
    (app_dir.parent / "graceserve.conf.py").write_text(
        textwrap.dedent(
            """\
            import multiprocessing

            bind = ["127.0.0.1:0"]
            workers = 2
            timeout = 20
            keep_alive = 5
            chdir = "site"
            env = ["GREETING=from-the-file"]


            def _helper():
                return multiprocessing.cpu_count()
            """
        )
    )
    server = start_server(["-c", "graceserve.conf.py", "hello:app"], cwd=app_dir.parent)
    address = server.wait_ready(timeout=30)
    assert "2 workers" in server.output
    assert get(address, "/")[2].decode() == f"from-the-file {app_dir}"


def test_flags_and_variables_win_over_the_config_file(
    start_server: StartServer, app_dir: Path
) -> None:
    (app_dir / "conf.py").write_text('bind = "127.0.0.1:1"\nworkers = 3\nenv = ["GREETING=file"]\n')
    server = start_server(
        ["--config", "site/conf.py", "hello:app", "-w", "1", "--chdir", "site",
         "--env", "GREETING=flag"],
        env={"GRACESERVE_BIND": "127.0.0.1:0"}, cwd=app_dir.parent,
    )  # fmt: skip
    address = server.wait_ready()
    assert "1 worker " in server.output
    assert get(address, "/")[2].decode() == f"flag {app_dir}"


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_reload_reads_the_config_file_again(
    start_server: StartServer, app_dir: Path, workers: str
) -> None:
    """HUP starts new worker processes with the same command line: they read the file
    again (as gunicorn's HUP does), so an edited app setting reaches the new code."""
    conf = app_dir / "conf.py"
    conf.write_text('env = ["GREETING=before"]\n')
    server = start_server(
        ["-c", "conf.py", "hello:app", "-b", "127.0.0.1:0", "-w", workers], cwd=app_dir
    )
    address = server.wait_ready(timeout=30)
    assert get(address, "/")[2].decode() == f"before {app_dir}"
    conf.write_text('env = ["GREETING=after"]\n')
    server.send(signal.SIGHUP)
    server.wait_for_line(r"HUP: generation 2 is ready", timeout=30)
    assert get(address, "/")[2].decode() == f"after {app_dir}"


def test_a_toml_config_file(app_dir: Path) -> None:
    (app_dir / "graceserve.toml").write_text('bind = ":8125"\nworkers = 2\ntarget = "hello:app"\n')
    result = run_cli("-c", "graceserve.toml", "--check-config", cwd=app_dir)
    if sys.version_info < (3, 11):
        assert_one_line_usage_error(result, "TOML needs Python 3.11")
        return
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "graceserve: configuration OK: hello:app on 0.0.0.0:8125, 2 workers, "
        f"settings from {app_dir / 'graceserve.toml'}"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("workers = 'many'\n", ["workers", "'many' is not a whole number"]),
        ("accesslog = '-'\n", ["accesslog", "not a graceserve setting", "access_log"]),
        ("def post_fork(server, worker):\n    pass\n", ["post_fork", "gunicorn server hook"]),
        ("x = 1\nraise RuntimeError('no db')\n", ["line 2", "RuntimeError: no db"]),
        ("bind = \n", ["line 1"]),
        ('bind = ["127.0.0.1:1", "127.0.0.1:1"]\n', ["127.0.0.1:1", "given twice"]),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file(
    tmp_path: Path, source: str, words: list[str]
) -> None:
    (tmp_path / "conf.py").write_text(source)
    result = run_cli("-c", "conf.py", "--check-config", cwd=tmp_path)
    assert_one_line_usage_error(result, str(tmp_path / "conf.py"), *words)


def test_check_config_imports_the_target_and_serves_nothing(app_dir: Path) -> None:
    result = run_cli("hello:app", "--check-config", "-b", "127.0.0.1:1", cwd=app_dir)
    assert result.returncode == 0, result.stderr
    assert "configuration OK: hello:app on 127.0.0.1:1, 1 worker" in result.stdout
    assert result.stderr == ""  # no banner, no readiness line: nothing was started
    (app_dir / "broken.py").write_text("import os\nraise RuntimeError('db not configured')\n")
    result = run_cli("broken:app", "--check-config", cwd=app_dir)
    assert_one_line_usage_error(result, "broken", "db not configured")
