"""Loaded at startup by child processes whose PYTHONPATH holds this folder: the loopback-only network log (tests/frameworks.py)."""

from frameworks import log_network_at_exit

log_network_at_exit()
