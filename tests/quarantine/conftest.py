"""Fixtures of the quarantine tests (defined in quarantine_harness.py and the proxy's)."""

from proxy.proxy_harness import proxy_factory, recording_sink, worker_pool

from quarantine.quarantine_harness import reporting_proxy, webhook

__all__ = ["proxy_factory", "recording_sink", "reporting_proxy", "webhook", "worker_pool"]
