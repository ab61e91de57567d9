"""A plain http.server handler, served with a keep-alive-aware drain.

Run:   python -m graceserve examples.hello_http:Handler --bind 127.0.0.1:8080
Poke:  curl -i http://127.0.0.1:8080/           (hello)
       curl -i http://127.0.0.1:8080/healthz    (200, or 503 once stopping)
Stop:  kill -TERM <pid>: in-flight requests finish with "Connection: close",
       idle keep-alive connections are closed cleanly, the exit code is 0.

Nothing here knows about graceserve except the health route, which reads
``self.server.stopping`` so a load balancer stops routing here before the
listener closes (use --drain-delay to give it time).
"""

from __future__ import annotations

import http.server
import json


class Handler(http.server.BaseHTTPRequestHandler):
    """GET / and GET /healthz over HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            stopping = getattr(self.server, "stopping", False)
            self.reply(503 if stopping else 200, {"stopping": stopping})
        else:
            self.reply(200, {"hello": "world", "path": self.path})

    def reply(self, status: int, payload: object) -> None:
        """Send ``payload`` as JSON."""
        body = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
