"""The core: a socketserver that stops politely, with no HTTP in it.

The registry of live connections guarded by one Condition (``drain``), the accept
loop that takes the listener out of service without resetting anyone
(``accepting``), ``GracefulTCPServer`` (``server``), the one drain sequence
(``stopping``) and the hooks a server calls for whoever runs it (``serverhooks``).
Imports nothing from ``http``, ``wsgi`` or ``process``.
"""
