"""A TCP echo server: every line you send comes back.

Run:   python -m graceserve examples.echo:Handler --bind 127.0.0.1:9000
Poke:  bash -c 'exec 3<>/dev/tcp/127.0.0.1/9000; printf "hello\nworld\n" >&3; head -n2 <&3'
       (bash's /dev/tcp: nc's option to quit after sending differs between its variants)
Stop:  kill -TERM <pid>   (an open session keeps the drain waiting until it
       ends or the grace passes; see examples.lines for a polite session end)
"""

from __future__ import annotations

import socketserver


class Handler(socketserver.StreamRequestHandler):
    """Echo each line until the client closes.  One instance per connection."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)
