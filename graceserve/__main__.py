"""``python -m graceserve``: the same program as the ``graceserve`` console script."""

from graceserve.cli import run

run()
