"""The access log's formats as the tests read them.

Why this module exists: the access-log and front-door tests check lines against the same
patterns; written once here.
"""

from __future__ import annotations

import re

__all__ = ["COMBINED"]


COMBINED = re.compile(
    r"^(?P<client>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" '
    r'"(?P<agent>[^"]*)" (?P<duration>\d+\.\d{6})$'
)
