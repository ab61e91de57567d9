"""Hooks a server calls for whoever runs it: a heartbeat, and request counting.

Why this module exists: whoever runs a server may need to know two things of
it: that its accept loop still turns (a worker's ``--worker-timeout`` reads the
age of the last turn) and how many requests it finished (``--max-requests``).
Workers used to learn them by replacing the server's ``service_actions`` and by
subclassing its handler class; that switched off the reaper (the idle timeout)
and graceserve's own request cycle in exactly the modes production uses (a
worker, every generation after a reload).  Instead a server holds one
``ServerHooks`` and calls it at fixed points, next to its own work, never
instead of it:

- ``loop_turn()``: as the accept loop (``serve_forever``) starts, before its
  first wait, and after each of its turns, once ``service_actions`` (where the
  reaper runs) has returned;
- ``may_accept(held)``: before the loop accepts a queued client, with the
  number of connections the server holds; False leaves the client to another
  process on the same listener for a moment (a worker holding more connections
  than a peer: ``graceserve.process.balance``).  The loop asks again after
  ``ACCEPT_DEFER`` and accepts anyway once it has deferred for
  ``ACCEPT_DEFER_LIMIT`` (``graceserve.core.accepting``);
- ``request_done(status, seconds)``: once per finished request: an HTTP
  request answered by a handler, a WSGI application's response sent (its
  status, 0 if none was sent, and the seconds since its request line
  arrived), a TCP connection served (0 and 0.0: no status applies).

Install them with ``server.install_hooks(hooks)`` before ``serve_forever``.
The defaults do nothing.

Threading contract: ``loop_turn`` and ``may_accept`` are called from the thread running
``serve_forever``; ``request_done`` from handler threads, concurrently, on the
path of every request: an implementation must be thread-safe and cheap.
"""

from __future__ import annotations

__all__ = ["NO_HOOKS", "ServerHooks"]


class ServerHooks:
    """What a server calls for its runner; subclass and override what you need.

    Methods that may be overridden:

    - loop_turn()      the accept loop started, or made a turn (the serving thread)
    - may_accept(held) whether to accept the next client now (the serving thread)
    - request_done(status, seconds)   one request was finished (a handler thread;
                                      thread-safe)
    """

    def loop_turn(self) -> None:
        """The accept loop started (before its first wait), or finished a turn,
        ``service_actions`` included."""

    def may_accept(self, held: int) -> bool:
        """Whether to accept a queued client now, holding ``held`` connections;
        False: another process should take it (the loop looks again shortly)."""
        return True

    def request_done(self, status: int = 0, seconds: float = 0.0) -> None:
        """One request was finished (an HTTP request, a WSGI call, a TCP connection):
        ``status`` the response's (0: none was sent, or a TCP connection), ``seconds``
        from its request line to its end (``--metrics-bind`` reads both)."""


NO_HOOKS = ServerHooks()
"""Hooks that do nothing: what a server calls until others are installed."""
