"""A line protocol that ends its sessions politely when the server drains.

Run:   python -m graceserve examples.lines:Handler --bind 127.0.0.1:9001
Poke:  nc 127.0.0.1 9001      then type: TIME, UPPER some text, QUIT
Stop:  kill -TERM <pid> while nc is connected: the session gets
       "BYE server is shutting down" at once, instead of being cut at the
       grace deadline, and the process exits 0.

The trick is ``self.server.wait_for_input(self)`` before each read: it returns
True when the client has sent something and False as soon as the drain starts
(or after the server's idle timeout), so the handler is never stuck in a read
the drain has to cut.
"""

from __future__ import annotations

import socketserver
import time


class Handler(socketserver.StreamRequestHandler):
    """Commands: TIME, UPPER <text>, QUIT.  One instance per connection."""

    def handle(self) -> None:
        self.say("HELLO graceserve line protocol; commands: TIME, UPPER <text>, QUIT")
        while self.server.wait_for_input(self):  # type: ignore[attr-defined]
            line = self.rfile.readline()
            if not line:
                return  # the client closed
            command, _, argument = line.decode("utf-8", "replace").strip().partition(" ")
            if command.upper() == "QUIT":
                self.say("BYE")
                return
            if command.upper() == "TIME":
                self.say(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            elif command.upper() == "UPPER":
                self.say(argument.upper())
            else:
                self.say(f"ERR unknown command {command!r}")
        self.say("BYE server is shutting down")

    def say(self, text: str) -> None:
        """Send one line."""
        self.wfile.write(text.encode() + b"\r\n")
