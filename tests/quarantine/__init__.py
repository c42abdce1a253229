"""Quarantine, reports and the quarantine CLI (a package, so its conftest does not shadow
tests/conftest.py)."""
