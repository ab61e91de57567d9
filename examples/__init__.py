"""Example handlers: run one with ``python -m graceserve examples.NAME:Handler``."""
