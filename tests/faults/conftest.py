"""Fixtures of the fault tests: the proxy harness's (a proxy on its own event loop, a shared
worker pool, a recording next hop) and a next hop with faults."""

from collections.abc import Iterator

import pytest
from proxy.proxy_harness import proxy_factory, recording_sink, worker_pool

from faults.nexthop import NextHop, next_hop

__all__ = ["faulty_hop", "proxy_factory", "recording_sink", "worker_pool"]


@pytest.fixture
def faulty_hop() -> Iterator[NextHop]:
    with next_hop() as hop:
        yield hop
