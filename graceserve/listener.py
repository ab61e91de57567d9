"""Making the listening server for an address: TCP (v4/v6) or a Unix socket.

Why this module exists: binding is where most start-up failures happen
(address in use, permission denied, a name that does not resolve, a stale
Unix socket file), and each must become one clear line and exit code 3 with
nothing left behind.  A Unix socket file is created with mode 0600, replaced
only if nothing answers on it (a stale file from a killed run), and removed at
exit only if it is still ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import socketserver
import stat
from typing import Any

from .errors import StartupError
from .httpserver import GracefulHTTPServer
from .server import GracefulTCPServer, format_address
from .target import is_http_handler, is_wsgi_app
from .wsgi import GracefulWSGIServer

__all__ = ["Address", "make_server", "remove_unix_socket"]

Address = tuple[str, int] | str
"""(host, port) for TCP, or a filesystem path for a Unix socket."""


def make_server(
    handler_class: type[socketserver.BaseRequestHandler],
    address: Address,
    inherited: socket.socket | None = None,
    **settings: Any,
) -> GracefulTCPServer:
    """A bound, listening server for ``handler_class``; StartupError if impossible.

    ``handler_class`` may also be a WSGI application (served by GracefulWSGIServer).

    With ``inherited`` (socket activation, or a graceful restart), serve on
    that listening socket and ignore ``address``.  ``settings`` become class
    attributes of the server (``max_connections``, ``idle_timeout``, ...);
    those a server class does not know are dropped.
    """
    base: type[GracefulTCPServer] = (
        GracefulHTTPServer if is_http_handler(handler_class) else GracefulTCPServer
    )
    if is_wsgi_app(handler_class):  # the app takes the handler class's place
        base = GracefulWSGIServer
    if inherited is not None:
        return _adopt(base, handler_class, inherited, settings)
    family: int
    sockaddr: Any
    if isinstance(address, str):
        _clear_stale_unix_socket(address)
        family, sockaddr = socket.AF_UNIX, address
    else:
        family, sockaddr = _resolve(address)
    server_class = _configured(base, family, settings)
    old_umask = os.umask(0o177) if family == socket.AF_UNIX else None
    try:
        return server_class(sockaddr, handler_class)
    except OSError as exc:
        where = format_address(sockaddr)
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)


def _adopt(
    base: type[GracefulTCPServer],
    handler_class: type[socketserver.BaseRequestHandler],
    listener: socket.socket,
    settings: dict[str, Any],
) -> GracefulTCPServer:
    """A server around an already bound socket (it is put in listening state)."""
    server_class = _configured(base, listener.family, settings)
    try:
        server = server_class(listener.getsockname(), handler_class, bind_and_activate=False)
        server.socket.close()
        server.socket = listener
        server.server_address = listener.getsockname()
        if isinstance(server, GracefulHTTPServer):
            server.server_name, server.server_port = "localhost", 0
            if isinstance(server.server_address, tuple):
                server.server_port = server.server_address[1]
        listener.listen(server.request_queue_size)
    except OSError as exc:
        raise StartupError(f"cannot serve on the inherited socket: {exc.strerror or exc}") from None
    return server


def _configured(
    base: type[GracefulTCPServer], family: int, settings: dict[str, Any]
) -> type[GracefulTCPServer]:
    """A subclass of ``base`` with ``settings`` (those it knows) as class attributes."""
    known = {key: value for key, value in settings.items() if hasattr(base, key)}
    return type(base.__name__, (base,), {"address_family": family, **known})


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
