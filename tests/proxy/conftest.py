"""Fixtures of the proxy tests (defined in proxy_harness.py, which tests also import)."""

from proxy.proxy_harness import proxy_factory, recording_sink, worker_pool

__all__ = ["proxy_factory", "recording_sink", "worker_pool"]
