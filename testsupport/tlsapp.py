"""The TLS tests' app; the test CA itself lives in ``testsupport.pki`` (re-exported here).

A test CA signs the server certificates (subjectAltName 127.0.0.1, so the
stdlib client and curl verify them as they would a real one) and the client
certificates.  EC P-256 keys: fast to make.  Loopback only.
"""

from __future__ import annotations

import json

from .pki import Pki, https_get, make_pki

__all__ = ["Pki", "https_get", "make_pki"]

APP = """\
import json


def app(environ, start_response):
    body = json.dumps({
        "remote_addr": environ["REMOTE_ADDR"],
        "scheme": environ["wsgi.url_scheme"],
        "host": environ.get("HTTP_HOST"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""
"""A WSGI app (``app:app``) that answers what it was told about the client."""


def load_json(body: bytes) -> dict[str, object]:
    result = json.loads(body)
    assert isinstance(result, dict)
    return result
