"""One process with ``--user``: bind as root, hand over what we remove at exit, drop, import.

Why this module exists: without ``--user`` a single process imports the target
first (a broken app fails before anything is bound).  With it the order must be
the other way round, since the app must never run as root: the pidfile is
taken and the listener bound while we are root; the pidfile and a ``unix:``
socket are given to the user (the process that removes them at exit is the
user by then, and in a sticky directory such as ``/tmp`` only a file's owner
may remove it); then the switch (``graceserve.process.privileges``); then the
import, and the server is made on the listener bound before it.  Files the
server opens itself (the TLS certificate and key, the access log) are opened
after the switch, as they are again by a reload's new process: they must be
readable (writable) by the user.

Threading: the main thread, before the server's threads start.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
from collections.abc import Sequence

from graceserve.core.server import GracefulTCPServer
from graceserve.errors import StartupError
from graceserve.process.listener import make_listener, make_server, remove_unix_socket
from graceserve.process.pidfile import PidFile
from graceserve.process.privileges import Identity, chown_for, drop, may_write
from graceserve.process.target import load_target
from graceserve.settings import Settings
from graceserve.wsgi.server import WSGIApplication

__all__ = ["bind_then_drop", "check_pidfile_directory", "give_unix_sockets"]

log = logging.getLogger("graceserve")


def bind_then_drop(
    handler: type[socketserver.BaseRequestHandler] | WSGIApplication | str,
    settings: Settings,
    identity: Identity,
    inherited: Sequence[socket.socket],
    pidfile: PidFile | None,
) -> GracefulTCPServer:
    """The server for ``handler`` (imported now, if a target name), as ``identity``.

    ``pidfile`` is already held.  StartupError (exit 3) for anything that fails;
    the listener is closed (and a ``unix:`` socket removed) then.
    """
    holder = make_listener(settings, inherited)
    holder.block_on_close = False  # it only binds: nothing to drain
    try:
        if not inherited:
            give_unix_sockets(identity, holder)
        if pidfile is not None and pidfile.fileno is not None:
            chown_for(identity, fd=pidfile.fileno)
        drop(identity)
        log.info(
            "running as %s, groups %s", identity.describe(),
            ",".join(str(gid) for gid in os.getgroups()) or "none",
            extra={"event": "user", "uid": identity.uid, "gid": identity.gid},
        )  # fmt: skip
        if not inherited:
            _warn_unix_directories(holder, identity)
        loaded = load_target(handler) if isinstance(handler, str) else handler
        return make_server(loaded, settings, [listener.dup() for listener in holder.listeners])
    except BaseException:
        if not inherited:
            remove_unix_socket(holder)
        raise
    finally:
        holder.server_close()


def check_pidfile_directory(identity: Identity, pidfile: str) -> None:
    """StartupError (exit 3) unless the user may write the pidfile's directory: the
    control socket is made there after the switch, and both are removed from there."""
    directory = os.path.dirname(os.path.abspath(pidfile))
    if os.path.isdir(directory) and not may_write(identity, directory):
        raise StartupError(
            f"--pidfile {pidfile}: {identity.describe()} cannot write {directory} (with one "
            "process the control socket is made next to the pidfile after the switch, and "
            "both are removed at exit); use a directory it can write "
            "(systemd: RuntimeDirectory=)"
        )


def give_unix_sockets(identity: Identity, holder: GracefulTCPServer) -> None:
    """Give each ``unix:`` socket file ``holder`` listens on to ``identity`` (the user
    removes it at exit, and its clients' permissions follow the file's owner)."""
    for address in holder.server_addresses:
        if isinstance(address, str) and address:
            chown_for(identity, path=address)


def _warn_unix_directories(holder: GracefulTCPServer, identity: Identity) -> None:
    """A unix socket's file is removed at exit by the user: say so if it cannot be."""
    for address in holder.server_addresses:
        if not isinstance(address, str) or not address:
            continue
        directory = os.path.dirname(address)
        if not os.access(directory, os.W_OK | os.X_OK):
            log.warning(
                "%s cannot write %s: the socket file will be left there at exit "
                "(the next start replaces it)", identity.describe(), directory,
            )  # fmt: skip
