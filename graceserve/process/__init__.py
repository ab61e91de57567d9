"""The process model: a server as a process, its signals, pidfile and workers.

``runner`` (``serve()``: one process, signals, the drain, the exit code), the
supervisor as a state machine (``machine*``, ``supervisor``) and its workers
(``worker``, ``workerproc``, ``prefork``), the pidfile, the control socket and
``ctl``, systemd's protocols, reaping orphans as PID 1, ``--reload``'s watcher.
Imports from ``core``, ``http`` and ``wsgi``.
"""
