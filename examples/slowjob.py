"""A slow job, to watch a drain happen.

Run:   python -m graceserve examples.slowjob:Handler --bind 127.0.0.1:8081 --grace 10
Poke:  curl -i 'http://127.0.0.1:8081/job?seconds=5' &   then at once
       kill -TERM <pid>
Watch: the log says "draining 1 connections", then "1 connections remaining"
       once a second; the job's response arrives with "Connection: close";
       the process exits 0.  Make the job longer than --grace to see it cut
       at the deadline (exit code 4), or send a second TERM to cut it now
       (exit code 143).
"""

from __future__ import annotations

import http.server
import threading
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /job?seconds=N works for N seconds (at most 600) and reports."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        try:
            seconds = min(max(float(query.get("seconds", ["3"])[0]), 0.0), 600.0)
        except ValueError:
            seconds = 3.0
        threading.Event().wait(seconds)  # stands in for real work
        body = f"job done after {seconds:g} s\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
