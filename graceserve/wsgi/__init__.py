"""PEP 3333 on the HTTP request cycle: ``GracefulWSGIServer`` and its dispatcher.

``server`` (the server, ``make_server``), ``handler`` (one connection: the
environ, the cycle's WSGI dispatcher), ``response`` (``start_response``, the
iterable, framing), ``errors`` (``wsgi.errors`` as JSON records).  Imports
from ``core`` and ``http`` only.
"""
