"""HTTPOptions: what a GracefulHTTPServer is told (TCPOptions and the HTTP fields).

Why this module exists: the HTTP server's timeouts, limits, TLS files, access
log and proxy trust are one frozen object, applied once in the server's
constructor, before it binds: the TLS context is built, the access log opened
and the limits computed there, so a bad certificate fails at start, never at
the first request.  The compatibility rule of ``graceserve.core.options``
holds: without ``options=``, the server class's attributes of the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

from graceserve.core.options import TCPOptions
from graceserve.settings import DEFAULTS

__all__ = ["HTTPOptions"]


@dataclass(frozen=True)
class HTTPOptions(TCPOptions):
    """The options a GracefulHTTPServer reads.  Immutable; safe to share between threads."""

    idle_timeout: float | None = DEFAULTS.idle_timeout
    """Close a keep-alive connection idle this long, a head or body stalled this long,
    a response the client stopped reading this long; None: never."""
    min_body_rate: float | None = DEFAULTS.min_body_rate
    """Bytes/s a request body must average over each ``idle_timeout`` of waiting for it;
    None: no minimum."""
    drain_linger_max: float = DEFAULTS.drain_linger_max
    """At drain, the most an idle or unfinished connection is given (seconds)."""
    health_path: str | None = DEFAULTS.health_path
    """A path graceserve answers itself (200, then 503 once a stop begins); None: off."""
    limit_request_line: int = DEFAULTS.limit_request_line
    """Bytes in the request line (414 beyond)."""
    limit_request_fields: int = DEFAULTS.limit_request_fields
    """Header fields in a request (431 beyond)."""
    limit_request_field_size: int = DEFAULTS.limit_request_field_size
    """Bytes in one header field line (431 beyond)."""
    max_body_size: int | None = DEFAULTS.max_body_size
    """Bytes of request body (413 beyond); None: no limit."""
    certfile: str | None = DEFAULTS.certfile
    """TLS: the certificate chain (PEM); None: plain HTTP (or ``ssl_context`` set by a subclass)."""
    keyfile: str | None = DEFAULTS.keyfile
    """TLS: the private key (PEM); None: it is in ``certfile``."""
    ca_certs: str | None = DEFAULTS.ca_certs
    """TLS: CA certificates client certificates are checked against."""
    cert_reqs: str = DEFAULTS.cert_reqs
    """TLS: client certificates: none, optional or required."""
    access_log: str | None = DEFAULTS.access_log
    """``-`` (stderr) or a path; None: no access log."""
    access_log_format: str = DEFAULTS.access_log_format
    """combined or json."""
    forwarded_allow_ips: str = DEFAULTS.forwarded_allow_ips
    """Peers whose X-Forwarded-* and Forwarded headers are believed (``*``: any)."""
