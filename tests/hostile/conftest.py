"""Fixtures of the hostile-input tests (defined in harness.py)."""

from hostile.harness import hostile_server, server

__all__ = ["hostile_server", "server"]
