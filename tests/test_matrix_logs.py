"""Logs in every mode: the access log (combined, json) and ``--log-format json``.

Rows of the contract matrix (README: "Access log", "Logs: --log-format
text|json"), for a handler and a WSGI app in every mode.  ``--log-format
json`` promises one JSON object per stderr line: graceserve's own lines, a
handler's ``log_message`` lines, and (the decision here) what a WSGI app writes
to ``wsgi.errors``, its standard error stream, such as Flask's exception log.
"""

from __future__ import annotations

import json
import re

import pytest

from testsupport import contract
from testsupport.contract import AccessLog, JsonLogs
from testsupport.matrix import (
    Lab,
    rows,
)

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(300)]

PHASES = [
    {
        "access combined": contract.access_log("combined"),
        "access json": contract.access_log("json"),
        "json logs": contract.json_logs,
    }
]

COMBINED = re.compile(
    r"^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" (?P<seconds>\d+\.\d+)$'
)
REQUESTS = ["GET /?q=1 HTTP/1.1", "POST /echo HTTP/1.1", "GET /seen/access HTTP/1.1"]


def access(lab: Lab, fmt: str) -> AccessLog:
    outcome = lab.outcome(f"access {fmt}")
    assert isinstance(outcome, AccessLog)
    assert outcome.exit_code == 0
    return outcome


@rows()
def test_access_log_combined_writes_one_line_per_response(lab: Lab) -> None:
    lines = access(lab, "combined").lines
    matches = [COMBINED.match(line) for line in lines]
    assert len(matches) == 3, lines
    assert all(matches), lines
    assert sorted(m["request"] for m in matches if m) == sorted(REQUESTS), lines
    first = next(m for m in matches if m and m["request"] == REQUESTS[0])
    assert (first["status"], first["referer"], first["agent"]) == ("200", "http://r/", "matrix/1")
    echo = next(m for m in matches if m and m["request"] == REQUESTS[1])
    assert echo["bytes"] == "5", lines


@rows()
def test_access_log_json_writes_one_object_per_response(lab: Lab) -> None:
    lines = access(lab, "json").lines
    records = [json.loads(line) for line in lines]
    assert len(records) == 3, lines
    keys = {"time", "client", "method", "path", "query", "protocol", "status", "bytes",
            "duration", "user_agent", "referer"}  # fmt: skip
    assert all(keys <= set(record) for record in records), records
    first = next(record for record in records if record["query"] == "q=1")
    assert (first["method"], first["path"], first["status"]) == ("GET", "/", 200), first
    assert (first["client"], first["user_agent"], first["referer"]) == (
        "127.0.0.1", "matrix/1", "http://r/",
    )  # fmt: skip
    echo = next(record for record in records if record["path"] == "/echo")
    assert (echo["method"], echo["bytes"]) == ("POST", 5), echo


def json_logs(lab: Lab) -> JsonLogs:
    outcome = lab.outcome("json logs")
    assert isinstance(outcome, JsonLogs)
    assert outcome.exit_code == 0
    return outcome


@rows()
def test_log_format_json_makes_every_stderr_line_one_json_object(lab: Lab) -> None:
    outcome = json_logs(lab)
    assert outcome.loose == [], outcome.loose[:20]


@rows()
def test_log_format_json_lines_carry_their_documented_events(lab: Lab) -> None:
    """Every readiness line is ``ready`` (with its url), the drain's start
    ``drain_start``, the last line ``stopped`` (with the exit code)."""
    objects = json_logs(lab).objects
    ready = [entry for entry in objects if entry["message"].startswith("listening on ")]
    assert ready, objects
    assert all(entry.get("event") == "ready" for entry in ready), ready
    assert all("url" in entry for entry in ready), ready
    draining = [entry for entry in objects if entry["message"].startswith("SIGTERM: draining")]
    assert draining, objects
    assert all(entry.get("event") == "drain_start" for entry in draining), draining
    assert objects[-1].get("event") == "stopped", objects[-1]
    assert objects[-1].get("exit_code") == 0, objects[-1]


@rows()
def test_log_format_json_wraps_what_the_app_logs(lab: Lab) -> None:
    """A handler's ``log_message``/``log_error``; a WSGI app's exception log on
    ``wsgi.errors``, traceback included, inside one object."""
    outcome = json_logs(lab)
    texts = [json.dumps(entry) for entry in outcome.objects]
    if lab.combo.handler:
        assert any(f"app message {outcome.marker}" in text for text in texts), outcome.lines
        assert any(f"app error {outcome.marker}" in text for text in texts), outcome.lines
    else:
        wrapped = [text for text in texts if f"app failure {outcome.marker}" in text]
        assert wrapped, outcome.lines
        assert any("Traceback (most recent call last)" in text for text in wrapped), wrapped
