"""TLS for the HTTP servers: the context, and the handshake in the connection's own thread.

Why this module exists: the accept loop must never wait for a client, so the
handshake cannot happen where the stdlib's ``wrap_socket`` on the listener
would put it (in ``accept``).  Each connection is wrapped in its own thread,
with a deadline on the handshake only; after it the socket is blocking again,
as on the plain path (no socket timeout per request).

The drain keeps working on the *raw* socket, unchanged: the registry is keyed
by it, the reaper peeks at it with ``recv(MSG_PEEK)`` and cuts it with
``shutdown``.  That is why the TLS layer wraps a duplicate of its descriptor
(``SSLSocket`` detaches the socket it wraps, and ``SSLSocket.recv`` refuses
flags): both descriptors name one kernel socket, so a ``shutdown`` on the raw
one makes the TLS reads return EOF, and ``MSG_PEEK`` on it sees encrypted bytes
the client sent.  Decrypted bytes never wait inside the TLS object while a
handler is idle: a thread blocks in ``SSL_read`` only when nothing is pending,
so "nothing queued in the kernel" still means "nothing sent".  The handler and
the WSGI loop read and write through the ``SSLSocket`` (``ServerTLSSocket``,
which knows its raw socket for registry look-ups: ``raw_socket``).

When a connection ends by itself (the client left, a response said ``close``,
the drain closed an idle keep-alive connection by shutting its read side), a
TLS ``close_notify`` is sent before the FIN, without waiting for the client's.
A forced cut sends none: both directions are already shut.

Threading contract: ``build_context`` at start-up (its errors become one
line, exit 3); ``secured`` in the connection's thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any

from graceserve.core.connection import format_address

__all__ = [
    "CERT_REQS",
    "ServerTLSSocket",
    "TLSSettingsError",
    "build_context",
    "raw_socket",
    "secured",
]

log = logging.getLogger("graceserve")

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 48\r\n"
    b"Connection: close\r\n\r\n"
    b"This port speaks HTTPS: use https:// to reach it"
)


class TLSSettingsError(Exception):
    """A certificate, key or CA file that cannot be used (one line, for exit code 3)."""


class ServerTLSSocket(ssl.SSLSocket):
    """A server-side ``SSLSocket`` that remembers the raw socket the drain knows it by."""

    graceserve_raw: socket.socket | None = None


def raw_socket(sock: Any) -> Any:
    """The socket the registry knows a connection by (the raw one under a TLS socket)."""
    raw = getattr(sock, "graceserve_raw", None)
    return sock if raw is None else raw


def build_context(
    certfile: str,
    keyfile: str | None = None,
    ca_certs: str | None = None,
    cert_reqs: str = "none",
) -> ssl.SSLContext:
    """A server context (TLS 1.2 minimum) with the certificate chain loaded.

    Raises TLSSettingsError with a one-line message for a missing or
    unreadable file, a file that is not PEM, or a key that does not match the
    certificate.
    """
    if cert_reqs not in CERT_REQS:
        raise TLSSettingsError(f"cert_reqs {cert_reqs!r} is not one of {', '.join(CERT_REQS)}")
    for what, path in (("certfile", certfile), ("keyfile", keyfile), ("ca-certs", ca_certs)):
        if path is not None and not os.access(path, os.R_OK):
            reason = "does not exist" if not os.path.exists(path) else "is not readable"
            raise TLSSettingsError(f"--{what} {path}: {reason}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The drain ends an idle connection by shutting the raw socket's read side:
    # OpenSSL 3 would take that EOF for a truncation attack and send the client a
    # fatal decode_error alert instead of our close_notify.  Truncation is caught
    # where it matters, by HTTP framing (a short body or head is never dispatched).
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    context.sslsocket_class = ServerTLSSocket
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except TLSSettingsError as exc:
        raise TLSSettingsError(f"--keyfile {keyfile or certfile}: {exc}") from None
    except ssl.SSLError as exc:
        raise TLSSettingsError(
            f"--certfile {certfile}" + (f" --keyfile {keyfile}" if keyfile else "")
            + f": cannot load the certificate and key ({_reason(exc)})"
        ) from None  # fmt: skip
    except OSError as exc:
        raise TLSSettingsError(f"--certfile {certfile}: {exc.strerror or exc}") from None
    if ca_certs is not None:
        try:
            context.load_verify_locations(cafile=ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise TLSSettingsError(f"--ca-certs {ca_certs}: {_reason(exc)}") from None
    context.verify_mode = CERT_REQS[cert_reqs]
    return context


def _no_passphrase() -> bytes:
    """Never prompt on a terminal for an encrypted key: say it cannot be used."""
    raise TLSSettingsError("the private key is encrypted (a passphrase is not supported)")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason.lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc)


@contextlib.contextmanager
def secured(
    context: ssl.SSLContext, request: socket.socket, client_address: Any, timeout: float | None
) -> Iterator[ServerTLSSocket | None]:
    """The TLS socket over ``request`` once its handshake is done; None if it failed.

    The handshake has ``timeout`` seconds (None: no limit); a failure is
    logged at DEBUG with the peer, and a plain HTTP request gets a clear-text
    400 before the close.  On the way out a ``close_notify`` is sent (never
    waiting for the client's) and the duplicate descriptor is closed; the raw
    socket stays the server's to shut and close.  Connection thread only.
    """
    stream = context.wrap_socket(request.dup(), server_side=True, do_handshake_on_connect=False)
    assert isinstance(stream, ServerTLSSocket)
    stream.graceserve_raw = request
    try:
        try:
            stream.settimeout(timeout)
            stream.do_handshake()
            stream.settimeout(None)
        except (OSError, ValueError) as exc:
            _handshake_failed(request, client_address, exc)
            yield None
            return
        yield stream
        _close_notify(stream)
    finally:
        stream.close()


def _handshake_failed(request: socket.socket, client_address: Any, exc: BaseException) -> None:
    reason = getattr(exc, "reason", None)
    if reason == "HTTP_REQUEST":
        log.debug("%s: plain HTTP on the TLS port: answered 400", format_address(client_address))
        with contextlib.suppress(OSError):
            request.sendall(_PLAIN_HTTP_ANSWER)
        return
    what = "timed out" if isinstance(exc, TimeoutError) else _reason(exc)
    log.debug("%s: TLS handshake failed: %s", format_address(client_address), what)


def _close_notify(stream: ssl.SSLSocket) -> None:
    """Send our ``close_notify``; do not wait for the client's (never blocks)."""
    with contextlib.suppress(OSError, ValueError):
        stream.setblocking(False)
        stream.unwrap()
