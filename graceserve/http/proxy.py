"""Trusting a proxy: the client, scheme and host it says it forwarded for.

Why this module exists: behind a load balancer every peer is the balancer,
and the real client, scheme and host arrive in headers anyone can send.  They
are believed only from the peers in ``--forwarded-allow-ips``, and then only
as far as the chain of trusted hops goes: the client is the right-most
address of ``X-Forwarded-For`` (or RFC 7239 ``Forwarded``'s ``for=``) that
is not itself a trusted proxy, so a client cannot pass off an address by
sending its own header first.  ``Forwarded`` wins over the ``X-Forwarded-*``
fields when both are sent.  A malformed value (not an address, an unknown
scheme, a host that is not a host) is ignored, never an error response.

What is believed is what RFC 7239 allows, checked before the app or the
access log sees it: a client is an IPv4 or IPv6 address (never with a zone
identifier: ``fe80::1%eth0`` means something only on the proxy's host, and
its free text would reach ``REMOTE_ADDR`` and the log), a port is 1 to 65535
in ASCII digits, a scheme is ``http`` or ``https``, a host is what an
absolute-form target's authority may be (``graceserve.http.host``).  Being
lenient about quoting (``for=1.2.3.4:80`` unquoted) lets nothing else
through.

Bounded work: only the ``MAX_HOPS`` right-most hops are read (whatever lies
further left was written by the client, who can make it as long as the head
limits allow), and an element longer than any valid one is malformed.

Pure functions and an immutable ``Trust``: thread-safe.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graceserve.http.host import valid_authority

__all__ = [
    "MAX_HOPS",
    "Forwarded",
    "Trust",
    "forwarded",
    "forwarded_from_environ",
    "forwarded_from_message",
    "parse_allow_ips",
]

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')
_SCHEMES = frozenset({"http", "https"})
MAX_HOPS = 64
"""Hops read from the right of a forwarded chain: more trusted proxies than
this in a row is not a deployment, it is a client's own list."""
_MAX_ELEMENT = 1024  # characters in one Forwarded element: a valid one is far shorter
_ESCAPED_BACKSLASH = "\ue000"  # stands for ``\\`` while the other backslashes go


@dataclass(frozen=True)
class Trust:
    """Which peers are trusted proxies: any, or those in ``networks``."""

    any: bool
    networks: tuple[_IPNetwork, ...]

    def trusts(self, host: str) -> bool:
        """Whether ``host`` (an address, as a string) is a trusted proxy.  A Unix socket
        peer (``unix``) is: only local processes allowed by the file's mode reach it."""
        if self.any or host == "unix":
            return True
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def parse_allow_ips(text: str) -> Trust:
    """``*``, or a comma-separated list of addresses and networks (``10.0.0.0/8``).

    ValueError (one line) for an entry that is neither.  An empty list trusts nobody.
    """
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if "*" in entries:
        return Trust(True, ())
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return Trust(False, tuple(networks))


@dataclass(frozen=True)
class Forwarded:
    """What a trusted proxy said: the client (host, port), scheme and host; None: not said."""

    client: str | None = None
    port: str | None = None
    proto: str | None = None
    host: str | None = None


_NOTHING = Forwarded()


def forwarded(peer: str, headers: Mapping[str, str], trust: Trust) -> Forwarded:
    """What ``headers`` forward, if ``peer`` is trusted; empty ``Forwarded`` otherwise.

    ``headers`` maps lower-case names (``forwarded``, ``x-forwarded-for``,
    ``x-forwarded-proto``, ``x-forwarded-host``) to their (joined) values.
    """
    if not headers or not trust.trusts(peer):
        return _NOTHING
    rfc = headers.get("forwarded")
    if rfc is not None:
        elements = _parse_forwarded(rfc)
        if elements is not None:
            return _from_elements(elements, trust)
        return _NOTHING
    hops: list[dict[str, str]] = []
    count = 0
    xff = headers.get("x-forwarded-for")
    if xff is not None:
        addresses = xff.split(",")
        count = len(addresses)
        hops = [{"for": value.strip()} for value in addresses[-MAX_HOPS:]]
    for name, key in (("x-forwarded-proto", "proto"), ("x-forwarded-host", "host")):
        value = headers.get(name)
        if value is None:
            continue
        values = value.split(",")
        if len(values) == count:  # one per hop: align with the addresses
            for hop, item in zip(hops, values[-len(hops) :], strict=True):
                hop[key] = item.strip()
        elif hops:
            hops[-1][key] = values[-1].strip()  # the nearest proxy's word
        else:
            hops = [{key: values[-1].strip()}]
    return _from_elements(hops, trust)


_FIELDS = ("forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")


def forwarded_from_message(peer: str, headers: Any, trust: Trust) -> Forwarded:
    """``forwarded`` for a handler's ``headers`` (an ``email.message.Message``, or None)."""
    if headers is None or not trust.trusts(peer):
        return _NOTHING
    found: dict[str, str] = {}
    for name in _FIELDS:
        values = headers.get_all(name)
        if values:
            found[name] = ",".join(values)
    return forwarded(peer, found, trust)


def forwarded_from_environ(peer: str, environ: Mapping[str, Any], trust: Trust) -> Forwarded:
    """``forwarded`` for a WSGI environ's ``HTTP_*`` keys."""
    found: dict[str, str] = {}
    for name, key in _ENVIRON_KEYS:
        value = environ.get(key)
        if value is not None:
            found[name] = value
    if not found:  # the common case, even from a trusted peer: nothing to read
        return _NOTHING
    return forwarded(peer, found, trust)


_ENVIRON_KEYS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in _FIELDS)


def _from_elements(hops: list[dict[str, str]], trust: Trust) -> Forwarded:
    """Walk the hops right to left past trusted proxies; the first other one is the client."""
    if not hops:
        return _NOTHING
    chosen = hops[0]
    client = port = None
    if any("for" in hop for hop in hops):
        for hop in reversed(hops):
            node = _node(hop.get("for", ""))
            if node is None:
                return _NOTHING  # malformed: believe none of it
            chosen = hop
            client, port = node
            if not trust.trusts(client):
                break
    # The client's own hop says how it came in; else the nearest hop that says it.
    proto = chosen.get("proto", _nearest(hops, "proto"))
    host = chosen.get("host", _nearest(hops, "host"))
    if proto is not None:
        proto = proto.lower() if proto.lower() in _SCHEMES else None
    if host is not None and not valid_authority(host):
        host = None
    return Forwarded(client, port, proto, host)


def _nearest(hops: list[dict[str, str]], key: str) -> str | None:
    return next((hop[key] for hop in reversed(hops) if key in hop), None)


def _node(text: str) -> tuple[str, str | None] | None:
    """(address, port or None) of a ``for`` value: ``1.2.3.4``, ``1.2.3.4:80``, ``[v6]``,
    ``[v6]:80``, a bare IPv6 address; None if it is not one of those (a zone
    identifier, a port out of range or in other than ASCII digits included)."""
    text = text.strip()
    port: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and rest[:1] != ":"):
            return None
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text
    if port is not None and not _valid_port(port):
        return None
    if "%" in host:  # a zone identifier: not in RFC 7239's node grammar
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(address), port


def _valid_port(port: str) -> bool:
    """1 to 65535, in at most five ASCII digits."""
    return 0 < len(port) <= 5 and port.isascii() and port.isdigit() and 0 < int(port) <= 65535


def _parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """The ``MAX_HOPS`` right-most RFC 7239 elements (``for=..;proto=..``, comma
    separated); None if one of them is malformed."""
    elements: list[dict[str, str]] = []
    for element in value.split(",")[-MAX_HOPS:]:  # a quoted value never holds a comma we accept
        if len(element) > _MAX_ELEMENT:
            return None
        pairs: dict[str, str] = {}
        for part in element.split(";"):
            if not part.strip():
                continue
            match = _PAIR.fullmatch(part)
            if match is None:
                return None
            name, raw = match[1].lower(), match[2]
            if raw.startswith('"'):
                raw = _unquote(raw[1:-1])
            pairs[name] = raw
        elements.append(pairs)
    return elements


def _unquote(text: str) -> str:
    """A quoted-string's content with its quoted-pairs undone (``\\x`` is ``x``).

    The regex checked that every backslash starts a pair, so, read from the
    left, the first of two adjacent backslashes always starts one: the pairs
    are found by ``str.replace`` (no per-character loop).
    """
    if "\\" not in text:
        return text
    text = text.replace("\\\\", _ESCAPED_BACKSLASH).replace("\\", "")
    return text.replace(_ESCAPED_BACKSLASH, "\\")
