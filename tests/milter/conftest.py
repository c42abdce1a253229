"""Fixtures of the milter tests (defined in milter_harness.py)."""

from proxy.proxy_harness import worker_pool

from milter.milter_harness import milter_factory

__all__ = ["milter_factory", "worker_pool"]
