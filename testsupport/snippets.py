"""Code snippets in the docs, run as written: extracted here, run by ``SnippetRunner``.

Why this module exists: a README whose examples do not run teaches the wrong thing on
the first day.  The README's tests (and later the docs site's) pull every fenced block
out of a Markdown file (``fenced``) and the ``Run:``/``Poke:`` lines out of the
examples' header comments (``example_commands``), and run them the way a reader would:

- a Python block starting with ``# NAME.py`` is that file: it is written into the
  scratch directory (a later ``sh`` line serves it) and must import;
- any other Python block is a script: it must exit 0;
- an ``sh`` block runs line by line in the scratch directory (``cd`` moves for the
  rest of the block).  A line that starts graceserve (``python -m graceserve ...`` or
  ``graceserve ...``) starts the server in the background, on ``127.0.0.1:0`` instead
  of its ``--bind`` (parallel runs never collide), waits for the readiness line and,
  for HTTP, a ``GET /`` that is not a 5xx; later lines that name the address it was
  given (``127.0.0.1:8080``) reach the real one.  Every other line must exit 0.  At
  the end of the block (or when a line starts another server on the same address) the
  server gets SIGTERM and must exit 0 (one that a line already stopped, with ``graceserve
  ctl stop``, must have exited 0).  A server line may start with environment
  assignments (``GRACESERVE_WORKERS=2 python -m graceserve ...``): the server gets them.

``run_markdown`` runs every block of a page this way, with the caller's lists of what
is not run.

What cannot run here (a registry, systemd, a placeholder URL) is left to the caller
to list, with its reason: ``SnippetRunner.run_sh`` takes the substrings of the lines
to skip.  Threading: one runner per test, used by one thread.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .process import ServerProcess, child_env, fail

__all__ = [
    "CommandLine",
    "NotRun",
    "Snippet",
    "SnippetRunner",
    "example_commands",
    "fenced",
    "module_name",
    "run_markdown",
    "server_argv",
    "server_command",
]

COMMAND_TIMEOUT = 120.0  # seconds a non-server line may take (pip, django startproject)
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")


@dataclass(frozen=True)
class Snippet:
    """A fenced code block: where it is, its language (info string) and its code."""

    source: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def fenced(text: str, source: str = "") -> list[Snippet]:
    """Every fenced code block of a Markdown ``text``, in order (CommonMark fences)."""
    snippets: list[Snippet] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            stripped = lines[end].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end])
            end += 1
        code = "\n".join(body) + "\n"
        snippets.append(Snippet(source, index + 1, opening["info"].lower(), code))
        index = end + 1
    return snippets


def module_name(snippet: Snippet) -> str | None:
    """``NAME`` for a Python block whose first line is ``# NAME.py`` (a file), else None."""
    first = snippet.code.lstrip("\n").split("\n", 1)[0]
    match = re.fullmatch(r"#\s*([A-Za-z_]\w*)\.py\b.*", first.strip())
    return match[1] if match else None


@dataclass(frozen=True)
class CommandLine:
    """One command of an ``sh`` block or an example's header, continuation lines joined."""

    where: str
    text: str


def command_lines(snippet: Snippet) -> list[CommandLine]:
    """The commands of an ``sh`` block: continuations joined, blank and comment lines gone."""
    commands: list[CommandLine] = []
    pending = ""
    start = 0
    for offset, raw in enumerate(snippet.code.splitlines(), start=1):
        if not pending:
            start = offset
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip() and not pending.strip().startswith("#"):
            commands.append(
                CommandLine(f"{snippet.source}:{snippet.line + start}", pending.strip())
            )
        pending = ""
    return commands


_HEADER = re.compile(r"^(?:#\s*)?(?P<label>Run|Poke|Stop|Watch|Use it):\s*(?P<rest>.*)$")


def example_commands(path: Path) -> dict[str, list[CommandLine]]:
    """The commands under each label (``Run:``, ``Poke:``, ...) of an example's header.

    The header is its docstring or its leading ``#`` comments; a label's lines are the
    rest of its line and the indented lines after it.  A trailing ``(comment)`` after
    two spaces is dropped.
    """
    found: dict[str, list[CommandLine]] = {}
    label = None
    for number, raw in enumerate(path.read_text().splitlines()[:40], start=1):
        body = (raw[1:] if raw.startswith("#") else raw).rstrip()
        match = _HEADER.match(body.strip().lstrip('"'))
        if match:
            label, text = match["label"], match["rest"]
        elif label is not None and body.startswith("   ") and body.strip():
            text = body.strip()
        else:
            label = None
            continue
        text = re.sub(r"\s{2,}\(.*\)$", "", text).strip()
        if text:
            found.setdefault(label, []).append(CommandLine(f"{path.name}:{number}", text))
    return found


_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ";;", "(", ")", "<", ">", ">>", "2>"})


def server_command(command: str) -> tuple[dict[str, str], list[str]] | None:
    """The environment assignments and graceserve arguments if ``command`` starts a server.

    ``[NAME=VALUE ...] python -m graceserve ARGS`` or ``[NAME=VALUE ...] graceserve
    ARGS`` (shell comments dropped); None for anything else, for ``ctl``, ``--help`` and
    ``--version`` (they end by themselves), and for a line with a shell operator
    (``;``, ``&&``, ``|``, ``&``, a redirection), even one written against a word.
    """
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:
        return None
    if any(word in _OPERATORS or set(word) <= set("|&;<>()") for word in words):
        return None
    env: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    args = server_argv(shlex.join(words))
    return None if args is None else (env, args)


def server_argv(command: str) -> list[str] | None:
    """The graceserve arguments if ``command`` starts a server, else None.

    ``python -m graceserve ARGS`` or ``graceserve ARGS`` (shell comments dropped),
    except ``ctl``, ``--help``, ``--version`` and ``--check-config``, which end by
    themselves.
    (``server_command`` also takes environment assignments before it.)
    """
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    if words[:3] in (["python", "-m", "graceserve"], ["python3", "-m", "graceserve"]):
        args = words[3:]
    elif words[:1] == ["graceserve"]:
        args = words[1:]
    else:
        return None
    if args[:1] == ["ctl"] or {"--help", "-h", "--version", "--check-config"} & set(args):
        return None
    if any(w in ("|", "&&", ";", "&", ">", "2>") for w in args):
        return None
    return args


def with_bind(args: list[str], bind: str) -> tuple[list[str], str]:
    """``args`` listening on ``bind`` instead; and the address they asked for."""
    out: list[str] = []
    asked = "127.0.0.1:8000"
    skip = False
    for index, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("--bind", "-b") and index + 1 < len(args):
            asked, skip = args[index + 1], True
            continue
        if arg.startswith("--bind="):
            asked = arg.split("=", 1)[1]
            continue
        out.append(arg)
    return [*out, "--bind", bind], asked


@dataclass
class _Running:
    server: ServerProcess
    asked: str  # the address the command asked for
    real: str  # HOST:PORT it listens on


@dataclass
class SnippetRunner:
    """Runs snippets in ``workdir`` with ``python`` and ``graceserve`` meaning this checkout.

    ``served`` collects every target a server line started (``module:attr``).
    """

    workdir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    served: list[str] = field(default_factory=list)
    ran: int = 0

    def __post_init__(self) -> None:
        bin_dir = self.workdir / ".snippet-bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        # Scripts, not symlinks: a virtual environment's python knows it is one only when
        # started by its own path.
        for name, run in (("python", ""), ("python3", ""), ("graceserve", " -m graceserve")):
            script = bin_dir / name
            script.write_text(f'#!/bin/sh\nexec "{sys.executable}"{run} "$@"\n')
            script.chmod(0o755)
        self.env = child_env({
            **self.extra_env,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        })  # fmt: skip

    # -- python ---------------------------------------------------------------------------

    def run_python(self, snippet: Snippet) -> None:
        """A ``# NAME.py`` block is written and must import; any other must exit 0."""
        name = module_name(snippet)
        if name is not None:
            (self.workdir / f"{name}.py").write_text(snippet.code)
            self._check(snippet.where, [sys.executable, "-c", f"import {name}"], self.workdir)
        else:
            self._check(snippet.where, [sys.executable, "-c", snippet.code], self.workdir)
        self.ran += 1

    # -- sh --------------------------------------------------------------------------------

    def run_sh(self, snippet: Snippet, skip: Mapping[str, str]) -> list[str]:
        """Run the block's commands; those containing a key of ``skip`` are not run.

        Returns the keys of ``skip`` that matched (the caller checks none is stale).
        """
        return self.run_commands(command_lines(snippet), skip)

    def run_commands(self, commands: list[CommandLine], skip: Mapping[str, str]) -> list[str]:
        cwd = self.workdir
        running: list[_Running] = []
        matched: list[str] = []
        try:
            for command in commands:
                keys = [key for key in skip if key in command.text]
                if keys:
                    matched.extend(keys)
                    continue
                text = command.text
                for server in running:  # HOST:PORT, and bash's /dev/tcp/HOST/PORT
                    text = text.replace(server.asked, server.real)
                    text = text.replace(
                        server.asked.replace(":", "/"), server.real.replace(":", "/")
                    )
                if text.startswith("cd "):
                    cwd = (cwd / shlex.split(text)[1]).resolve()
                    continue
                started = server_command(text)
                if started is None:
                    self._check(command.where, ["bash", "-c", text], cwd)
                else:
                    env, args = started
                    running = self._serve(command.where, args, cwd, running, env)
                self.ran += 1
        finally:
            for server in running:
                self._stop(server)
        return matched

    def _serve(
        self,
        where: str,
        args: list[str],
        cwd: Path,
        running: list[_Running],
        env: Mapping[str, str] | None = None,
    ) -> list[_Running]:
        env = dict(env or {})
        bound = any(a == "--bind" or a.startswith("--bind=") for a in args)
        args, asked = with_bind(args, "127.0.0.1:0")
        if not bound and "GRACESERVE_BIND" in env:  # the flag added above wins over it
            asked = env.pop("GRACESERVE_BIND")
        targets = [a for a in args[:-2] if ":" in a and not a.startswith("-")][:1]
        for old in [r for r in running if r.asked == asked]:  # the same address: one at a time
            self._stop(old)
            running = [r for r in running if r is not old]
        server = ServerProcess(args, env={**self.env, **env}, cwd=cwd)
        try:
            ready = server.wait_readiness(timeout=60)
        except BaseException:
            server.stop()
            raise
        host, port = ready.address if isinstance(ready.address, tuple) else ("", 0)
        current = _Running(server, asked, f"{host}:{port}")
        if ready.protocol == "http":
            status = _status_of_get(host, port)
            if status >= 500:
                self._stop(current)
                fail(f"{where}: GET / answered {status}\n{server.output}")
        self.served.extend(targets)
        return [*running, current]

    def _stop(self, running: _Running) -> None:
        server = running.server
        try:
            code = server.exited_within(0)  # a line stopped it already (ctl stop)
            if code is None:
                server.send(signal.SIGTERM)
                code = server.wait_exit(timeout=30)
            if code != 0:
                fail(f"exit code {code} after SIGTERM, not 0:\n{server.output}")
        finally:
            server.stop()

    def _check(self, where: str, argv: list[str], cwd: Path) -> None:
        try:
            result = subprocess.run(
                argv, cwd=cwd, env=self.env, capture_output=True, text=True,
                timeout=COMMAND_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            fail(f"{where}: still running after {COMMAND_TIMEOUT}s: {argv[-1][:200]}")
        if result.returncode != 0:
            fail(
                f"{where}: exit code {result.returncode}: {argv[-1][:500]}\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            )


def _status_of_get(host: str, port: int) -> int:
    """The status of ``GET /`` (headers only: a stream may never end)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status
    finally:
        with contextlib.suppress(OSError):
            conn.close()


@dataclass(frozen=True)
class NotRun:
    """What a page's test leaves out, each with its reason.

    ``lines``: substrings of ``sh`` lines; ``blocks``: substrings of Python blocks;
    ``languages``: info strings of fenced blocks that are not commands (logs, configs).
    """

    lines: Mapping[str, str] = field(default_factory=dict)
    blocks: Mapping[str, str] = field(default_factory=dict)
    languages: Mapping[str, str] = field(default_factory=dict)


SHELLS = ("sh", "bash", "console", "shell")


def run_markdown(runner: SnippetRunner, snippets: list[Snippet], not_run: NotRun) -> set[str]:
    """Run every Python and shell block of ``snippets`` in order; the ``not_run`` keys used.

    Fails on a block in a language that is neither run nor listed in ``not_run.languages``.
    """
    matched: set[str] = set()
    for snippet in snippets:
        if snippet.lang == "python":
            blocked = [key for key in not_run.blocks if key in snippet.code]
            if blocked:
                matched.update(blocked)
                continue
            runner.run_python(snippet)
        elif snippet.lang in SHELLS:
            matched.update(runner.run_sh(snippet, not_run.lines))
        elif snippet.lang in not_run.languages:
            matched.add(snippet.lang)
        else:
            fail(f"{snippet.where}: run it, or list ```{snippet.lang} with a reason")
    return matched
