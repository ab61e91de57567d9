"""Making the listening server for an address: TCP (v4/v6) or a Unix socket.

Why this module exists: binding is where most start-up failures happen
(address in use, permission denied, a name that does not resolve, a stale
Unix socket file), and each must become one clear line and exit code 3 with
nothing left behind.  A Unix socket file is created under ``--umask`` (mode
0600 by default), replaced only if nothing answers on it (a stale file from a
killed run), and removed at exit only if it is still ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import socketserver
import stat
from typing import Any

from graceserve.core.server import GracefulTCPServer, format_address
from graceserve.errors import StartupError
from graceserve.http import tls
from graceserve.http.accesslog import open_access_log
from graceserve.http.server import GracefulHTTPServer
from graceserve.http.tls import TLSSettingsError
from graceserve.process.target import is_http_handler, is_wsgi_app
from graceserve.settings import Address, Settings, apply_settings
from graceserve.wsgi.server import GracefulWSGIServer

__all__ = ["Address", "check_http_options", "make_listener", "make_server", "remove_unix_socket"]

_NOT_HTTP = "--certfile, --access-log and --health-path are for HTTP handlers and WSGI apps"


def make_server(
    handler_class: type[socketserver.BaseRequestHandler],
    settings: Settings,
    inherited: socket.socket | None = None,
) -> GracefulTCPServer:
    """A bound, listening server for ``handler_class``; StartupError if impossible.

    ``handler_class`` may also be a WSGI application (served by GracefulWSGIServer).

    With ``inherited`` (socket activation, or a graceful restart), serve on
    that listening socket and ignore ``settings.bind``.  The server gets every
    setting it reads (``Settings.server_attributes``) before it binds.
    """
    wsgi = is_wsgi_app(handler_class)
    http = not wsgi and is_http_handler(handler_class)
    server_class: type[GracefulTCPServer] = GracefulHTTPServer if http else GracefulTCPServer
    if wsgi:  # the app takes the handler class's place
        server_class = GracefulWSGIServer
    attributes = settings.server_attributes(http, wsgi)
    if http:  # one request cycle, one set of head and body limits for both kinds
        attributes.update(
            limit_request_line=settings.limit_request_line,
            limit_request_fields=settings.limit_request_fields,
            limit_request_field_size=settings.limit_request_field_size,
            max_body_size=settings.max_body_size,
        )
    if not (http or wsgi) and (settings.certfile or settings.access_log or settings.health_path):
        raise StartupError(_NOT_HTTP)
    if inherited is not None:
        try:
            adopted = server_class.from_socket(inherited, handler_class)
        except OSError as exc:
            raise StartupError(
                f"cannot serve on the inherited socket: {exc.strerror or exc}"
            ) from None
        apply_settings(adopted, attributes)
        _setup_production(adopted)
        return adopted
    address = settings.bind
    family: int
    sockaddr: Any
    if isinstance(address, str):
        _clear_stale_unix_socket(address)
        family, sockaddr = socket.AF_UNIX, address
    else:
        family, sockaddr = _resolve(address)
    server_class = type(server_class.__name__, (server_class,), {"address_family": family})
    old_umask = os.umask(settings.umask) if family == socket.AF_UNIX else None
    server: GracefulTCPServer | None = None
    try:
        server = server_class(sockaddr, handler_class, bind_and_activate=False)
        apply_settings(server, attributes)
        _setup_production(server)
        server.server_bind()
        server.server_activate()
        return server
    except StartupError:
        if server is not None:
            server.server_close()
        raise
    except OSError as exc:
        if server is not None:
            server.server_close()
        where = format_address(sockaddr)
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)


def make_listener(settings: Settings, inherited: socket.socket | None = None) -> GracefulTCPServer:
    """A bound, listening server that only holds the listener (a supervisor's: it never
    accepts); StartupError if impossible.

    It serves no target, so it takes none of the HTTP options (TLS, access log,
    proxies): ``check_http_options`` checks those, for the workers that will.
    """
    binding = settings.but(certfile=None, keyfile=None, ca_certs=None, access_log=None)
    return make_server(socketserver.BaseRequestHandler, binding, inherited)


def check_http_options(settings: Settings, loaded: Any = None) -> None:
    """Fail fast, with the error a worker would give, on HTTP options it could not use.

    For a supervisor, which serves nothing itself: a certificate that does not
    load, an access log that cannot be opened, and (``loaded``: the target,
    imported with ``--preload``) TLS or an access log for a TCP handler.
    StartupError (exit code 3) for the first problem.
    """
    if settings.certfile is None and settings.access_log is None and settings.health_path is None:
        return
    if loaded is not None and not (is_wsgi_app(loaded) or is_http_handler(loaded)):
        raise StartupError(_NOT_HTTP)
    try:
        if settings.certfile is not None:
            tls.build_context(
                settings.certfile, settings.keyfile, settings.ca_certs, settings.cert_reqs
            )
        writer = open_access_log(settings.access_log, settings.access_log_format)
    except TLSSettingsError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"--access-log {settings.access_log}: {exc.strerror or exc}") from None
    if writer is not None:
        writer.close()


def _setup_production(server: GracefulTCPServer) -> None:
    """TLS context, access log, proxy trust (HTTP servers); StartupError if unusable."""
    if not isinstance(server, GracefulHTTPServer):
        return
    try:
        server.setup_production()
    except TLSSettingsError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"--access-log {server.access_log}: {exc.strerror or exc}") from None


def remove_unix_socket(server: GracefulTCPServer) -> None:
    """Remove the server's Unix socket file, if it has one and it is still its own."""
    if server.address_family != socket.AF_UNIX or not isinstance(server.server_address, str):
        return
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(server.server_address, follow_symlinks=False).st_mode):
            os.unlink(server.server_address)


def _resolve(address: tuple[str, int]) -> tuple[int, Any]:
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, sockaddr


def _clear_stale_unix_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; refuse anything else."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(f"cannot listen on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno != errno.ECONNREFUSED:
            raise StartupError(f"cannot listen on {path}: {exc.strerror}") from None
        os.unlink(path)  # stale: left by an instance that did not exit cleanly
    else:
        raise StartupError(f"cannot listen on {path}: another server is listening there")
    finally:
        probe.close()
