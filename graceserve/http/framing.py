"""Body framing, persistence and request-target form: RFC 9112's rules for a parsed head.

Why this module exists: where a request's body ends is the question request
smuggling attacks; the answer must be one strict function, used by every
server in graceserve, that refuses every ambiguous head (RFC 9112 6.3):
``Content-Length`` with ``Transfer-Encoding``, two lengths, a length in
list form, a coding we cannot undo.  It also decides persistence, checks
``Host`` and the request-target's form (an absolute-form target's authority
as strictly as ``Host``: ``graceserve.http.host``), and refuses a second copy
of a field that must be single because the two copies could be read
differently by a front end and the app (``Content-Type``,
``Authorization``).  Pure: no I/O.
"""

from __future__ import annotations

import re

from graceserve.http.host import valid_authority, valid_host
from graceserve.http.parse import Framing, Limits, RequestError, RequestLine

__all__ = ["SINGLE_FIELDS", "framing"]

_DEFAULT = Limits()

# Request-target forms (RFC 9112 3.2) other than origin-form ("/...") and "*".
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*://")
_SCHEMES = frozenset({"http", "https"})
_NAME_PORT = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]+)?")  # the usual Host, valid: no more to check

# The fields framing() looks at, by lower-cased name; _KNOWN_FIELDS also has
# the usual spellings of common fields (it saves a lower() per field).
_OTHER, _CL, _TE, _HOST_N, _CONN, _EXPECT, _SINGLE = range(7)
SINGLE_FIELDS = ("Content-Type", "Authorization")
"""Fields besides Host and Content-Length refused when sent twice (400): not
lists (RFC 9110 5.3), and read by the app to parse the body or to decide who
the client is, where a front end keeping the first and an app the last (or
the joined value) would disagree."""
_FRAMING_FIELDS = {
    "content-length": _CL,
    "transfer-encoding": _TE,
    "host": _HOST_N,
    "connection": _CONN,
    "expect": _EXPECT,
    **{name.lower(): _SINGLE for name in SINGLE_FIELDS},
}
_COMMON_FIELDS = (
    "Host Connection Content-Length Transfer-Encoding Expect User-Agent Accept "
    "Accept-Encoding Accept-Language Accept-Charset Authorization Cache-Control "
    "Content-Type Cookie DNT If-Modified-Since If-None-Match Origin Pragma Range "
    "Referer TE Upgrade Upgrade-Insecure-Requests Via Sec-Fetch-Dest Sec-Fetch-Mode "
    "Sec-Fetch-Site Sec-Fetch-User Priority X-Forwarded-For X-Forwarded-Proto "
    "X-Real-IP X-Requested-With Forwarded Keep-Alive"
)
_KNOWN_FIELDS = {
    spelling: _FRAMING_FIELDS.get(name.lower(), _OTHER)
    for name in _COMMON_FIELDS.split()
    for spelling in (name, name.lower())
}
_SIMPLE_CONNECTION = frozenset({"keep-alive", "close"})

_NO_BODY = {
    (keep_alive, expect): Framing(None, False, keep_alive, expect)
    for keep_alive in (False, True)
    for expect in (False, True)
}


def framing(line: RequestLine, fields: list[tuple[str, str]], limits: Limits = _DEFAULT) -> Framing:
    """Decide body framing and persistence; reject what RFC 9112 says to reject.

    RequestError: 400 for ``Content-Length`` together with
    ``Transfer-Encoding``, conflicting/list-form/non-decimal
    ``Content-Length``, a missing ``Host`` on HTTP/1.1, a request-target in
    the wrong form for its method (``*`` only with OPTIONS, authority-form
    only with CONNECT, else origin-form or absolute-form); 501 for a
    Transfer-Encoding whose last coding is not ``chunked`` (or any
    Transfer-Encoding on HTTP/1.0); 413 for a ``Content-Length`` over
    ``limits.body``.

    Also 400 for: two ``Content-Length`` fields even with equal values (RFC
    9110 8.6 lets a recipient reject them; a proxy may have picked either),
    more than one ``Host`` or a malformed one (RFC 9112 3.2), two of a field
    in ``SINGLE_FIELDS``, an empty ``Transfer-Encoding`` or ``chunked``
    applied twice; an absolute-form target whose scheme is not http or https,
    with userinfo (RFC 9110 4.2.4), or whose authority is not a valid host
    and port (``graceserve.http.host``).  501 for a coding before ``chunked``
    (none is implemented).
    """
    _check_target(line.method, line.target)
    version = line.version
    if version == "HTTP/0.9":
        return _NO_BODY[False, False]
    lengths: list[str] = []
    codings: list[str] = []
    connection: list[str] = []
    host: str | None = None
    expect = False
    singles: set[str] | None = None
    known = _KNOWN_FIELDS.get
    for name, value in fields:
        which = known(name)
        if which is None:
            which = _FRAMING_FIELDS.get(name.lower(), _OTHER)
        if which == _OTHER:
            continue
        if which == _HOST_N:
            if host is not None:
                raise RequestError(400, "more than one Host header field")
            host = value
        elif which == _CONN:
            connection.append(value)
        elif which == _CL:
            lengths.append(value)
        elif which == _TE:
            codings.append(value)
        elif which == _SINGLE:
            lower = name.lower()
            if singles is None:
                singles = {lower}
            elif lower in singles:
                raise RequestError(400, f"more than one {name} header field")
            else:
                singles.add(lower)
        elif value.lower() == "100-continue":
            expect = version == "HTTP/1.1"
    if host is None:
        if version == "HTTP/1.1":
            raise RequestError(400, "missing Host header field")
    elif _NAME_PORT.fullmatch(host) is None and not valid_host(host):
        raise RequestError(400, "malformed Host header field")
    if not connection:
        tokens: set[str] | tuple[()] = ()
    elif len(connection) == 1 and connection[0].lower() in _SIMPLE_CONNECTION:
        tokens = {connection[0].lower()}
    else:
        tokens = {token.strip() for token in ",".join(connection).lower().split(",")}
    if version == "HTTP/1.1":
        keep_alive = "close" not in tokens
    else:
        keep_alive = "keep-alive" in tokens and "close" not in tokens
    if codings:
        if lengths:
            raise RequestError(400, "Content-Length together with Transfer-Encoding")
        return Framing(None, _chunked(codings, version), keep_alive, expect)
    if lengths:
        return Framing(_content_length(lengths, limits), False, keep_alive, expect)
    return _NO_BODY[keep_alive, expect]


def _check_target(method: str, target: str) -> None:
    """400 unless the request-target has the form its method allows (RFC 9112 3.2)."""
    if target[0] == "/":
        if method == "CONNECT":
            raise RequestError(400, "CONNECT needs an authority-form target (host:port)")
    elif _ABSOLUTE_FORM.match(target):
        if method == "CONNECT":
            raise RequestError(400, "CONNECT needs an authority-form target (host:port)")
        _check_absolute(target)
    elif target == "*":
        if method != "OPTIONS":
            raise RequestError(400, "the asterisk-form target is only for OPTIONS")
    elif valid_authority(target, port_required=True):
        if method != "CONNECT":
            raise RequestError(400, "the authority-form target is only for CONNECT")
    else:
        raise RequestError(400, "malformed request-target")


def _check_absolute(target: str) -> None:
    """400 unless an absolute-form target is ``http(s)://host[:port]`` then a path or query.

    The authority becomes the request's host (RFC 9112 3.2.2), so it is held
    to the rules of ``Host``; userinfo is refused (RFC 9110 4.2.4).  The path
    and query are checked as an origin-form's are (the request line).
    """
    scheme, _, rest = target.partition("://")
    if scheme.lower() not in _SCHEMES:
        raise RequestError(400, "absolute-form target with a scheme other than http or https")
    end = len(rest)
    for stop in ("/", "?"):
        found = rest.find(stop, 0, end)
        if found >= 0:
            end = found
    authority = rest[:end]
    if "@" in authority:
        raise RequestError(400, "userinfo in the request-target")
    if not valid_authority(authority):
        raise RequestError(400, "malformed authority in the request-target")


def _chunked(values: list[str], version: str) -> bool:
    """Check the Transfer-Encoding field values: True, or raise 400/501."""
    if version != "HTTP/1.1":
        raise RequestError(501, "Transfer-Encoding on an HTTP/1.0 request")
    codings = [c.strip().lower() for c in ",".join(values).split(",")]
    codings = [c for c in codings if c]
    if not codings:
        raise RequestError(400, "empty Transfer-Encoding")
    if codings[-1] != "chunked":
        raise RequestError(501, "Transfer-Encoding does not end in chunked")
    if "chunked" in codings[:-1]:
        raise RequestError(400, "chunked applied more than once")
    if len(codings) > 1:
        raise RequestError(501, f"transfer coding {codings[0]!r} is not implemented")
    return True


def _content_length(values: list[str], limits: Limits) -> int:
    """The one decimal Content-Length, or raise 400/413."""
    if len(values) > 1:
        raise RequestError(400, "more than one Content-Length header field")
    value = values[0]
    if not (value.isdigit() and value.isascii()):
        raise RequestError(400, "Content-Length is not a single decimal number")
    if len(value) > 18:
        raise RequestError(413, "Content-Length too large")
    length = int(value)
    if limits.body is not None and length > limits.body:
        raise RequestError(413, f"request body larger than {limits.body} bytes")
    return length
