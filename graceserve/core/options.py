"""TCPOptions: what a GracefulTCPServer is told, in one typed, frozen object.

Why this module exists: a server's options reach it once, in its constructor,
before it binds (``GracefulTCPServer(address, Handler, options=TCPOptions(...))``),
never by setting attributes after it is built.  Each server kind owns a
subclass with the fields it reads (``graceserve.http.options.HTTPOptions``,
``graceserve.wsgi.options.WSGIOptions``).

Compatibility rule: without ``options=``, a server's options are read from its
class attributes of the same names (``class S(GracefulTCPServer):
max_connections = 10`` keeps working); an explicit ``options=`` wins, field by
field given or defaulted by the dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["TCPOptions"]

_O = TypeVar("_O", bound="TCPOptions")


@dataclass(frozen=True)
class TCPOptions:
    """The options a GracefulTCPServer reads.  Immutable; safe to share between threads."""

    max_connections: int | None = None
    """At this many live connections, stop accepting (clients wait in the backlog); None: no cap."""
    input_timeout: float | None = None
    """The default timeout of ``wait_for_input``; None: none."""

    @classmethod
    def from_class(cls: type[_O], server_class: type[Any]) -> _O:
        """The options a server class gives by its class attributes (the compatibility rule)."""
        values = {
            field.name: getattr(server_class, field.name)
            for field in dataclasses.fields(cls)
            if hasattr(server_class, field.name)
        }
        return cls(**values)

    def but(self: _O, **changes: Any) -> _O:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)
