"""Fixtures of the security tests: the proxy harness's."""

from proxy.proxy_harness import proxy_factory, recording_sink, worker_pool

__all__ = ["proxy_factory", "recording_sink", "worker_pool"]
