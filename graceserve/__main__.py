"""``python -m graceserve``: the same program as the ``graceserve`` console script."""

from .cli import run

run()
