"""Making the listening server for an address: TCP (v4/v6) or a Unix socket.

Why this module exists: binding is where most start-up failures happen
(address in use, permission denied, a name that does not resolve, a stale
Unix socket file), and each must become one clear line and exit code 3 with
nothing left behind.  A Unix socket file is created under ``--umask`` (mode
0600 by default), replaced only if nothing answers on it (a stale file from a
killed run), and removed at exit only if it is still ours.  With several
``--bind`` addresses one server listens on all of them
(``AcceptingServer.add_listener``); they are bound in order, and if one fails
those already bound are closed (their Unix socket files removed) before the
error is raised.  An IPv6 listener is made IPv6-only when an IPv4 one is also
given, so that ``-b 0.0.0.0:8000 -b [::]:8000`` works as it reads.

It is also where a run's settings become a server's options
(``server_options``): the server kinds own their options types, the settings
leaf cannot import them, and this is the one place both are known.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import socket
import socketserver
import stat
from collections.abc import Sequence
from typing import Any

from graceserve.core.options import TCPOptions
from graceserve.core.server import GracefulTCPServer, format_address
from graceserve.errors import StartupError
from graceserve.http import tls
from graceserve.http.accesslog import open_access_log
from graceserve.http.options import HTTPOptions
from graceserve.http.server import GracefulHTTPServer
from graceserve.http.tls import TLSSettingsError
from graceserve.process.target import is_http_handler, is_wsgi_app
from graceserve.settings import Address, Settings
from graceserve.wsgi.options import WSGIOptions
from graceserve.wsgi.server import GracefulWSGIServer

__all__ = [
    "Address",
    "check_http_options",
    "make_listener",
    "make_server",
    "remove_unix_socket",
    "server_options",
    "unlink_socket_file",
]

_NOT_HTTP = "--certfile, --access-log and --health-path are for HTTP handlers and WSGI apps"


def server_options(settings: Settings, server_class: type[GracefulTCPServer]) -> TCPOptions:
    """The options a run's ``settings`` give a server of ``server_class``'s kind.

    TCPOptions for a TCP server (``--idle-timeout`` is its ``input_timeout``),
    HTTPOptions for an HTTP one, WSGIOptions (``wsgi.multiprocess`` True with
    ``--workers`` above 1, as PEP 3333 wants) for a WSGI one.
    """
    if not issubclass(server_class, GracefulHTTPServer):
        return TCPOptions(
            max_connections=settings.max_connections, input_timeout=settings.idle_timeout
        )
    http = HTTPOptions(
        max_connections=settings.max_connections,
        idle_timeout=settings.idle_timeout,
        min_body_rate=settings.min_body_rate,
        drain_linger_max=settings.drain_linger_max,
        health_path=settings.health_path,
        limit_request_line=settings.limit_request_line,
        limit_request_fields=settings.limit_request_fields,
        limit_request_field_size=settings.limit_request_field_size,
        max_body_size=settings.max_body_size,
        certfile=settings.certfile,
        keyfile=settings.keyfile,
        ca_certs=settings.ca_certs,
        cert_reqs=settings.cert_reqs,
        access_log=settings.access_log,
        access_log_format=settings.access_log_format,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    if not issubclass(server_class, GracefulWSGIServer):
        return http
    return WSGIOptions(
        **{field.name: getattr(http, field.name) for field in dataclasses.fields(http)},
        root_path=settings.root_path,
        multiprocess=settings.workers > 1,  # another process runs the app too
        threads=settings.threads or None,
    )


def make_server(
    handler_class: type[socketserver.BaseRequestHandler],
    settings: Settings,
    inherited: Sequence[socket.socket] = (),
) -> GracefulTCPServer:
    """A bound server listening on every address of ``settings.binds``; StartupError
    if impossible (nothing is left listening then).

    ``handler_class`` may also be a WSGI application (served by GracefulWSGIServer).

    With ``inherited`` listening sockets (socket activation, a graceful restart,
    a supervisor's workers), serve on those, in order, and ignore
    ``settings.binds``.  The server is built with its options
    (``server_options``), which it puts in force before it binds: an unusable
    certificate or access log is exit code 3 here.
    """
    wsgi = is_wsgi_app(handler_class)
    http = not wsgi and is_http_handler(handler_class)
    server_class: type[GracefulTCPServer] = GracefulHTTPServer if http else GracefulTCPServer
    if wsgi:  # the app takes the handler class's place
        server_class = GracefulWSGIServer
    if not (http or wsgi) and (settings.certfile or settings.access_log or settings.health_path):
        raise StartupError(_NOT_HTTP)
    options = server_options(settings, server_class)
    if inherited:
        try:
            server = server_class.from_socket(inherited[0], handler_class, options)
        except TLSSettingsError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            _raise_if_access_log(exc, settings)
            raise StartupError(
                f"cannot serve on the inherited socket: {exc.strerror or exc}"
            ) from None
        try:
            for sock in inherited[1:]:
                server.add_listener(sock)
        except OSError as exc:
            server.block_on_close = False
            server.server_close()
            raise StartupError(
                f"cannot serve on the inherited socket: {exc.strerror or exc}"
            ) from None
        return server
    server = _bind_first(server_class, handler_class, settings, options)
    try:
        v6only = any(map(_is_ipv4, settings.binds))
        for address in settings.extra_binds:
            server.add_listener(_bind_socket(address, settings, server, v6only))
    except BaseException:
        server.block_on_close = False  # it never served: nothing to drain
        server.server_close()
        remove_unix_socket(server)
        raise
    return server


def _bind_first(
    server_class: type[GracefulTCPServer],
    handler_class: type[socketserver.BaseRequestHandler],
    settings: Settings,
    options: TCPOptions,
) -> GracefulTCPServer:
    """The server, bound to ``settings.bind`` and listening."""
    family, sockaddr = _socket_address(settings.bind)
    server_class = type(server_class.__name__, (server_class,), {"address_family": family})
    try:
        server = server_class(sockaddr, handler_class, bind_and_activate=False, options=options)
    except TLSSettingsError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        _raise_if_access_log(exc, settings)
        raise StartupError(
            f"cannot listen on {format_address(sockaddr)}: {exc.strerror or exc}"
        ) from None
    old_umask = os.umask(settings.umask) if family == socket.AF_UNIX else None
    try:
        if family == socket.AF_INET6 and any(map(_is_ipv4, settings.extra_binds)):
            _v6only(server.socket)
        server.server_bind()
        server.server_activate()
        return server
    except StartupError:
        server.server_close()
        raise
    except OSError as exc:
        server.server_close()
        where = format_address(sockaddr)
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)


def _bind_socket(
    address: Address, settings: Settings, server: GracefulTCPServer, v6only: bool
) -> socket.socket:
    """A socket bound to ``address`` and listening, made as the server makes its own
    (``add_listener`` then adopts it); StartupError if impossible."""
    family, sockaddr = _socket_address(address)
    where = format_address(sockaddr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    old_umask = os.umask(settings.umask) if family == socket.AF_UNIX else None
    try:
        if family != socket.AF_UNIX and server.allow_reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only:
            _v6only(sock)
        sock.bind(sockaddr)
        sock.listen(server.request_queue_size)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    return sock


def _socket_address(address: Address) -> tuple[int, Any]:
    """(family, socket address) to bind ``address`` to; a ``unix:`` path's stale socket
    file (no server behind it) is removed first."""
    if isinstance(address, str):
        _clear_stale_unix_socket(address)
        return socket.AF_UNIX, address
    return _resolve(address)


def _is_ipv4(address: Address) -> bool:
    return isinstance(address, tuple) and ":" not in address[0]


def _v6only(sock: socket.socket) -> None:
    """Make an IPv6 socket IPv6-only (an IPv4 listener is given too), not dual-stack."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def _raise_if_access_log(exc: OSError, settings: Settings) -> None:
    """StartupError for an access log that cannot be opened (the OSError names its path)."""
    path = settings.access_log
    if path is not None and exc.filename in (path, os.path.abspath(path)):
        raise StartupError(f"--access-log {settings.access_log}: {exc.strerror or exc}") from None


def make_listener(settings: Settings, inherited: Sequence[socket.socket] = ()) -> GracefulTCPServer:
    """A bound, listening server that only holds the listener (a supervisor's: it never
    accepts); StartupError if impossible.

    It serves no target, so it takes none of the HTTP options (TLS, access log,
    proxies): ``check_http_options`` checks those, for the workers that will.
    """
    binding = settings.but(
        certfile=None, keyfile=None, ca_certs=None, access_log=None, health_path=None
    )
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


def remove_unix_socket(server: GracefulTCPServer) -> None:
    """Remove the server's Unix socket files (one per ``unix:`` listener), those that
    are still sockets."""
    for address in server.server_addresses:
        unlink_socket_file(address)


def unlink_socket_file(address: Any) -> None:
    """Remove a Unix socket's file, if ``address`` is a path and the file still a socket.

    At the start of a stop this is a Unix listener's drop-all filter: new
    connects fail at once (no such file), while the clients already queued
    stay acceptable for the sweep.  Never raises.
    """
    if not isinstance(address, str) or not address:
        return
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(address, follow_symlinks=False).st_mode):
            os.unlink(address)


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
