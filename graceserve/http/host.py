"""RFC 3986 host and port syntax, for every place a client names a host.

Why this module exists: the ``Host`` field, the authority of an absolute-form
or authority-form request-target and a trusted proxy's forwarded host all
reach the application as ``HTTP_HOST`` (or ``forwarded_host``), where it
builds redirects, absolute links and cache keys.  A value that is not a host
(markup, ``user@host``, whitespace) must never get there by any of the three
doors, so all three use this one definition (RFC 9110 7.2 and 4.2.3, RFC 3986
3.2.2 and 3.2.3)::

    host       = IP-literal / IPv4address / reg-name
    IP-literal = "[" ( IPv6address / IPvFuture ) "]"
    reg-name   = *( unreserved / pct-encoded / sub-delims )
    port       = *DIGIT

An IPv6 literal is checked by ``ipaddress``; a zone identifier (RFC 6874's
``%25...``) is refused: it means something only on the client's own host.
An IPv4 address is a reg-name as far as the syntax goes.

Linear: the regexes are unrolled so that each byte can be matched by one
part only.  Pure functions: thread-safe.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["valid_authority", "valid_host"]

_REG_CHAR = r"A-Za-z0-9\-._~!$&'()*+,;="  # unreserved and sub-delims
_REG_NAME = rf"[{_REG_CHAR}]*(?:%[0-9A-Fa-f]{{2}}[{_REG_CHAR}]*)*"
_IP_LITERAL = rf"\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[{_REG_CHAR}:]+)\]"
_HOST = rf"(?:{_IP_LITERAL}|{_REG_NAME})"
_HOST_PORT = re.compile(_HOST + r"(?::[0-9]*)?")
_HOST_REQUIRED_PORT = re.compile(_HOST + r":[0-9]+")


def valid_host(text: str) -> bool:
    """Whether ``text`` is ``host [ ":" port ]`` (an empty host included: a
    ``Host`` field may be empty, RFC 9110 7.2)."""
    if _HOST_PORT.fullmatch(text) is None:
        return False
    return "[" not in text or _ip_literal_ok(text)


def valid_authority(text: str, port_required: bool = False) -> bool:
    """Whether ``text`` is a non-empty ``host [ ":" port ]`` with no userinfo, as
    an absolute-form target's authority (or, with ``port_required``, an
    authority-form target) must be."""
    pattern = _HOST_REQUIRED_PORT if port_required else _HOST_PORT
    if text[:1] in ("", ":") or pattern.fullmatch(text) is None:
        return False
    return "[" not in text or _ip_literal_ok(text)


def _ip_literal_ok(text: str) -> bool:
    """An ``[...]`` host the regex let through: IPvFuture, or a valid IPv6 address."""
    inside = text[1 : text.index("]")]
    if inside[:1] in ("v", "V"):
        return True
    try:
        ipaddress.IPv6Address(inside)
    except ValueError:
        return False
    return True
