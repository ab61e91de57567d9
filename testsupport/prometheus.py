"""A strict reader of the Prometheus text exposition format (0.0.4), and a scraper.

Why this module exists: ``--metrics-bind`` is only useful if Prometheus accepts
what it serves, and a test that merely searches the text for a name would pass
on output a real scraper rejects.  ``parse`` refuses anything the format does
not allow or that a scraper would choke on: a sample before its family's
``TYPE``, a family declared twice or interleaved with another, a bad metric or
label name, a bad escape, a value that is not a float, a duplicate series, a
histogram whose buckets are not cumulative or whose ``+Inf`` bucket is not its
``_count``, a counter below zero, text that does not end with a newline.  No
dependency: the format is small enough to read by hand.

Threading: plain functions, no state.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from .process import fail

__all__ = ["Exposition", "parse", "scrape"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
_PAIR = re.compile(rf'({_LABEL})="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_COMMENT = re.compile(rf"^# (HELP|TYPE) ({_NAME})(?: (.*))?$")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}

Labels = frozenset[tuple[str, str]]


@dataclass
class Exposition:
    """What a scrape said: each family's type and help, and every sample's value."""

    types: dict[str, str] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The value of the sample ``name{labels}`` (KeyError if there is none)."""
        return self.samples[(name, frozenset(labels.items()))]

    def has_family(self, name: str) -> bool:
        return name in self.types


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], text)


def _labels(text: str | None, line: str) -> Labels:
    if not text:
        return frozenset()
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _PAIR.match(text, position)
        if match is None:
            raise ValueError(f"bad labels in {line!r}")
        pairs.append((match.group(1), _unescape(match.group(2))))
        position = match.end()
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"a label given twice in {line!r}")
    return frozenset(pairs)


def _float(text: str, line: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("+", ""))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ValueError(f"bad value in {line!r}")
    return float(text)


def _family_of(name: str, types: dict[str, str]) -> str:
    """The declared family a sample name belongs to (a histogram's ``_bucket``...)."""
    if name in types and types[name] not in _SUFFIXES:
        return name
    for family, kind in types.items():
        for suffix in _SUFFIXES.get(kind, ()):
            if suffix and name == family + suffix:
                return family
    raise ValueError(f"sample {name} has no TYPE before it")


def parse(text: str) -> Exposition:
    """Read ``text`` strictly (see the module docstring); ValueError on the first fault."""
    if not text.endswith("\n"):
        raise ValueError("the exposition does not end with a newline")
    out = Exposition()
    finished: set[str] = set()  # families whose samples are over
    current: str | None = None
    for line in text[:-1].split("\n"):
        if not line:
            raise ValueError("an empty line")
        if line.startswith("#"):
            match = _COMMENT.match(line)
            if match is None:
                raise ValueError(f"a comment that is neither HELP nor TYPE: {line!r}")
            what, name, rest = match.groups()
            if name in finished:
                raise ValueError(f"{name} declared again after its samples: {line!r}")
            table = out.types if what == "TYPE" else out.help
            if name in table:
                raise ValueError(f"{what} given twice for {name}")
            if what == "TYPE" and rest not in _TYPES:
                raise ValueError(f"unknown type in {line!r}")
            table[name] = rest or ""
            if current is not None and current != name:
                finished.add(current)
            current = name
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a sample line: {line!r}")
        name, labels, value = match.group(1), _labels(match.group(2), line), match.group(3)
        family = _family_of(name, out.types)
        if family in finished or family != current:
            raise ValueError(f"samples of {family} are not together: {line!r}")
        key = (name, labels)
        if key in out.samples:
            raise ValueError(f"a series given twice: {line!r}")
        number = _float(value, line)
        if out.types[family] == "counter" and not number >= 0:
            raise ValueError(f"a counter below zero: {line!r}")
        out.samples[key] = number
    _check_histograms(out)
    return out


def _check_histograms(out: Exposition) -> None:
    for family, kind in out.types.items():
        if kind != "histogram":
            continue
        buckets = sorted(
            (_float(dict(labels)["le"], family), value)
            for (name, labels), value in out.samples.items()
            if name == family + "_bucket"
        )
        if not buckets or not math.isinf(buckets[-1][0]):
            raise ValueError(f"{family} has no +Inf bucket")
        counts = [value for _, value in buckets]
        if counts != sorted(counts):
            raise ValueError(f"{family}'s buckets are not cumulative: {buckets}")
        if out.samples.get((family + "_count", frozenset())) != counts[-1]:
            raise ValueError(f"{family}_count is not its +Inf bucket")
        if (family + "_sum", frozenset()) not in out.samples:
            raise ValueError(f"{family} has no _sum")


def scrape(url: str, timeout: float = 10.0) -> Exposition:
    """GET ``url`` and parse it (fails the test on a non-200 or a wrong Content-Type)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read().decode("utf-8")
    except urllib.error.URLError as exc:
        fail(f"scraping {url}: {exc}")
    if kind != "text/plain; version=0.0.4; charset=utf-8":
        fail(f"scraping {url}: Content-Type {kind!r}")
    return parse(body)
