"""The settings reference page, generated from the argument parser graceserve builds.

Why this module exists: a hand-written list of flags drifts from the code.  This
mkdocs hook (registered in ``mkdocs.yml`` under ``hooks:``) writes the reference
into ``docs/settings.md`` at build time, at the line ``<!-- generated: settings
reference -->``, from the very ``argparse`` parser that ``--help`` prints.  It
reads only what ``--help`` shows: each action's flags, metavar, choices, help
text, and two things graceserve puts into the help text: the environment
variable in brackets (``[GRACESERVE_BIND]``) and the default in parentheses
(``(default: 127.0.0.1:8000)``).  An ``env`` attribute or a real ``default`` on
an action, if graceserve ever sets one, is used instead.

When the parser moves to another module, change ``_build_parser`` below: nothing
else here names a graceserve module.  ``tests/test_docs_site.py`` checks that the
page lists every flag ``python -m graceserve --help`` shows.

Threading: plain functions, no state; mkdocs calls ``on_page_markdown`` from one thread.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: its ``graceserve`` is the one documented, not an installed one."""

MARKER = "<!-- generated: settings reference -->"
PAGE = "settings.md"

_ENV = re.compile(r"\s*\[([A-Z][A-Z0-9_]*)\]")
_DEFAULT = re.compile(r"\s*\(default: (?P<value>[^()]*)\)\s*$")  # argparse style: a value
_DEFAULT_WORDS = re.compile(r";\s*default: (?P<words>[^;]+)$")  # "; default: the demo app"
_FLAG_WORD = re.compile(r"(?<![\w`-])(--[a-z][a-z0-9-]*|GRACESERVE_[A-Z0-9_]+|/healthz)\b")


def _build_parser() -> argparse.ArgumentParser:
    """graceserve's own parser, from this checkout (the one import to change on a move)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from graceserve.config import build_parser

    return build_parser()


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    # argparse has no public way to list its actions; ``_actions`` has been the
    # same since Python 2.7 (sphinx-argparse and argcomplete read it too).
    return [
        action
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and action.help != argparse.SUPPRESS
    ]


def _groups(parser: argparse.ArgumentParser) -> list[tuple[str, list[argparse.Action]]]:
    """(title, actions) in the order ``--help`` shows them; argparse's own two titles renamed."""
    wanted = set(map(id, _actions(parser)))
    groups = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if id(a) in wanted]
        if not actions:
            continue
        title = group.title or "Options"
        if title in ("positional arguments",):
            title = "Target"
        elif title in ("options", "optional arguments"):
            title = "Options"
        groups.append((title[:1].upper() + title[1:], actions))
    return groups


def _anchor(action: argparse.Action) -> str:
    """The long flag named like the setting (``--idle-timeout``, not its alias
    ``--keep-alive``), else the last flag (``-b, --bind``: bind)."""
    own = "--" + action.dest.replace("_", "-")
    name = own if own in action.option_strings else None
    name = name or (action.option_strings or [str(action.metavar or action.dest)])[-1]
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _label(action: argparse.Action) -> str:
    """``-b, --bind ADDRESS`` (or ``TARGET``), as ``--help`` writes it."""
    if not action.option_strings:
        return str(action.metavar or action.dest)
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:
        return flags
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return f"{flags} {metavar}"


def _escape(text: str) -> str:
    """Markdown-safe text, with flags, environment variables and routes as code."""
    text = re.sub(r"([\\*_<>\[\]`|])", r"\\\1", text)
    return _FLAG_WORD.sub(lambda m: "`" + m[1].replace("\\", "") + "`", text)


class Setting:
    """One option as the page shows it: label, anchor, environment variable, default, help."""

    def __init__(self, action: argparse.Action) -> None:
        text = " ".join((action.help or "").split())
        env = getattr(action, "env", None)
        found = ([None, *_ENV.finditer(text)])[-1]  # the last: [IPV6]:PORT is a value
        if found is not None:
            env = env or found[1]
            text = text[: found.start()] + text[found.end() :]
        default: str | None = None
        if action.default not in (None, argparse.SUPPRESS) and action.nargs != 0:
            default = str(action.default)
        shown = _DEFAULT.search(text)
        if shown is not None:
            default = default if default is not None else shown["value"]
            text = text[: shown.start()]
        words = _DEFAULT_WORDS.search(text)
        self.default_words: str | None = None
        if words is not None and default is None:
            self.default_words = words["words"].strip()
            text = text[: words.start()]
        self.action = action
        self.label = _label(action)
        self.anchor = _anchor(action)
        self.env: str | None = env
        self.default = default
        text = text.strip()
        first = text.split(" ", 1)[0]
        self.help = text[:1].upper() + text[1:] if first.isalpha() and first.islower() else text
        self.flags = list(action.option_strings) or [self.label]

    def default_cell(self) -> str:
        if self.default_words is not None:
            return _escape(self.default_words)
        if self.default is None:
            return "none" if self.action.nargs != 0 else "off"
        return f"`{self.default}`" if self.default else "empty"

    def section(self) -> str:
        lines = [f"### `{self.label}` {{ #{self.anchor} }}", "", _escape(self.help) + ".", ""]
        facts = []
        if self.env:
            facts.append(f"Environment: `{self.env}`")
        if self.env or self.action.nargs != 0:
            facts.append(f"Default: {self.default_cell()}")
        if self.action.nargs == 0 and self.env:
            facts.append("The variable: `1`, `true`, `yes` or `on` (`0`, `false`, `no`, `off`)")
        lines += ["  \n".join(facts), ""]
        return "\n".join(lines)


def settings_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference as Markdown: a summary table, then one section per option."""
    parser = parser if parser is not None else _build_parser()
    groups = [(title, [Setting(a) for a in actions]) for title, actions in _groups(parser)]
    out = [
        "| setting | environment variable | default |",
        "|---|---|---|",
    ]
    for _title, settings in groups:
        for setting in settings:
            env = f"`{setting.env}`" if setting.env else ""
            # A | inside a code span does not split a cell (Python-Markdown's tables).
            default = setting.default_cell() if setting.env else ""
            out.append(f"| [`{setting.label}`](#{setting.anchor}) | {env} | {default} |")
    out.append("")
    for title, settings in groups:
        out += [f"## {title}", ""]
        out += [setting.section() for setting in settings]
    return "\n".join(out)


def on_page_markdown(markdown: str, *, page: Any, **_: Any) -> str:
    """mkdocs hook: put the reference at the marker of ``settings.md``."""
    if page.file.src_uri != PAGE:
        return markdown
    if markdown.count(MARKER) != 1:
        raise ValueError(f"{PAGE} must hold the line {MARKER!r} exactly once")
    return markdown.replace(MARKER, settings_reference())
