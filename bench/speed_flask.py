"""A Flask JSON view for bench/speed.py: ``GET /`` -> 200 ``application/json``.

A small but real app: Flask's routing, request context and ``jsonify``, so
that a server's own per-request cost is compared next to an app's typical one.
Every server in the speed bench imports this very module (``speed_flask:app``).
Needs Flask (bench/speed-requirements.txt; never a dependency of graceserve).
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/")
def index() -> Response:
    """A JSON object built from the request, like an API's smallest view."""
    return jsonify(message="hello", path=request.path, items=[1, 2, 3], ok=True)
