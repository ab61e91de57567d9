"""HTTP/1.1 on the core: the strict parser, the one request cycle, the server.

Parsing (``parse``, ``framing``, ``host``, ``body``), one connection's state
(``connection``) and request cycle (``cycle``), the stdlib handler's dispatcher
(``handler``, ``access``), ``GracefulHTTPServer`` (``server``), and what it adds:
TLS, proxy trust, the access log, the head budget and slow-client rules.
Imports from ``core`` only.
"""
