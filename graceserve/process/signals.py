"""Signals, recorded on arrival and handed to the controller thread.

Why this module exists: a Python signal handler runs on the main thread at an
arbitrary bytecode boundary, so it must not take locks, log, print or raise
(all of which deadlocked or crashed here).  And the main thread, the
controller, spends its life blocked on a Condition, which a signal cannot
notify.  So the work is split:

- Recording happens in C: with ``signal.set_wakeup_fd`` the interpreter's own
  low-level handler writes the signal number to a socketpair before any Python
  code runs.  Our Python-level handler has nothing left to do; it exists only
  so that the disposition is not SIG_DFL (which, for PID 1, means "ignore").
- A relay thread reads those numbers, queues them, and notifies the
  Conditions the controller may be waiting on.  The append happens before the
  notify, under the waiter's lock, so a waiter that checked ``pending`` and
  went to sleep is always woken.

SIGINT is installed even when inherited as ignored (background jobs of a
shell); SIGHUP inherited as ignored (nohup) stays ignored.  SIGUSR1 is not
queued: the relay thread itself writes every thread's stack to stderr.
(``faulthandler.register(all_threads=True)`` does it from C, without the
GIL, and crashed the process with SIGSEGV under load here; it also leaves
USR1 deadly when stderr has no file descriptor.)  ``restore()`` puts back
every previous handler; ``restore(ignore=True)`` instead leaves every signal
we handled ignored, for a process that is about to exit with the code it has
already logged (a late signal must not kill it with another).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import socket
import sys
import threading
import traceback
from types import FrameType
from typing import Any

__all__ = ["SignalRelay"]

log = logging.getLogger("graceserve")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
WORKER_SIGNALS = (signal.SIGTTIN, signal.SIGTTOU)  # one more / one fewer worker
DUMP_SIGNAL = signal.SIGUSR1


def _recorded_in_c(signum: int, frame: FrameType | None) -> None:
    """Nothing to do: the wake-up fd already carries ``signum`` to the relay."""


class SignalRelay:
    """Catches the stop signals and queues them for the controller.

    ``install`` and ``restore`` must be called from the main thread;
    ``pending``/``take`` and ``add_listener`` are thread-safe.
    """

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self._pending: collections.deque[int] = collections.deque()
        self._listeners: list[threading.Condition] = [self.condition]
        self._previous: dict[int, Any] = {}
        self._previous_wakeup_fd = -1
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wakeup_sockets: list[socket.socket] = []
        self.queue_dumps = False
        """Also queue USR1 after dumping (a supervisor passes it on to its workers)."""

    def install(self) -> None:
        """Install the handlers and start the relay.  Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        self._reader, self._writer = socket.socketpair()
        self._reader.settimeout(None)
        self._writer.setblocking(False)
        self._thread = threading.Thread(target=self._relay, name="graceserve-signals", daemon=True)
        self._thread.start()
        self._previous_wakeup_fd = signal.set_wakeup_fd(
            self._writer.fileno(), warn_on_full_buffer=False
        )
        for signum in (*STOP_SIGNALS, *WORKER_SIGNALS, DUMP_SIGNAL):
            previous = signal.getsignal(signum)
            if signum == signal.SIGHUP and previous is signal.SIG_IGN:
                continue  # nohup: the user asked for HUP to be ignored
            self._previous[signum] = previous
            signal.signal(signum, _recorded_in_c)

    def restore(self, ignore: bool = False) -> None:
        """Put back the previous handlers (``ignore``: SIG_IGN instead) and stop the relay.

        Main thread only.  Each disposition changes in one step, from our
        handler to the next one, so no signal finds the default action between.
        """
        for signum, previous in self._previous.items():
            if ignore:
                previous = signal.SIG_IGN
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self._writer is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            # The relay's recv() returns b"": it ends.  Shut down, not only closed: a
            # child the app forked holds a copy of this socket, which a close leaves open.
            with contextlib.suppress(OSError):
                self._writer.shutdown(socket.SHUT_WR)
            self._writer.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._reader is not None:
            self._reader.close()
        self._reader = self._writer = self._thread = None

    def add_listener(self, condition: threading.Condition) -> None:
        """Also notify ``condition`` whenever a signal arrives."""
        with self.condition:
            self._listeners.append(condition)

    def add_wakeup_socket(self, sock: socket.socket) -> None:
        """Also send a byte on ``sock`` (non-blocking) whenever a signal arrives: a
        selector loop (the supervisor) waits on its other end."""
        with self.condition:
            self._wakeup_sockets.append(sock)

    def inject(self, signum: int) -> None:
        """Queue ``signum`` as if it had arrived (a worker's supervisor speaks this way).
        Thread-safe."""
        self._pending.append(signum)
        self._notify()

    def pending(self) -> bool:
        """Whether signals are waiting to be taken.  Lock-free; for ``wake_up`` predicates."""
        return bool(self._pending)

    def take(self) -> list[int]:
        """Remove and return the signals received so far, oldest first."""
        taken: list[int] = []
        while self._pending:
            taken.append(self._pending.popleft())
        return taken

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a signal is pending (or ``timeout``); True if one is."""
        with self.condition:
            return self.condition.wait_for(self.pending, timeout)

    def _relay(self) -> None:
        reader = self._reader
        assert reader is not None
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if DUMP_SIGNAL in data:
                _dump_stacks()
                if not self.queue_dumps:
                    data = bytes(b for b in data if b != DUMP_SIGNAL)
            self._pending.extend(data)
            self._notify()

    def _notify(self) -> None:
        with self.condition:
            listeners = list(self._listeners)
            wakeups = list(self._wakeup_sockets)
        for condition in listeners:
            with condition:
                condition.notify_all()
        for sock in wakeups:
            # OSError: full (a wake-up is already pending) or closed (nobody waits).
            with contextlib.suppress(OSError):
                sock.send(b"\0")


def _dump_stacks() -> None:
    """Log every thread's stack, most recent call last.  Never raises."""
    try:
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        parts = []
        for ident, frame in sys._current_frames().items():
            stack = "".join(traceback.format_stack(frame))
            parts.append(f"Thread {ident:#x} ({names.get(ident, '?')}):\n{stack}")
        text = f"SIGUSR1: stacks of {len(parts)} threads\n" + "\n".join(parts)
        # Straight to stderr: asked for explicitly, so whatever the log level.
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:  # a dump must never take the server down (closed stderr included)
        log.debug("SIGUSR1: could not dump the stacks", exc_info=True)
