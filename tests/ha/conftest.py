"""Fixtures of the high-availability tests: a Sentinel layout (a master, a replica, three
sentinels) and a Cluster (three masters, three replicas) of real `redis-server` processes
on free ports (`servers.py`), each in a temp dir and killed at the end.

The module-scoped ones are shared by the tests that leave the layout as they found it;
tests that kill a master start a layout of their own (`fresh_sentinel`, `fresh_cluster`).
Each test writes under a key prefix of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha.servers import ClusterLayout, SentinelLayout


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelLayout]:
    with SentinelLayout(tmp_path_factory.mktemp("sentinel")).start() as layout:
        yield layout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLayout]:
    with ClusterLayout(tmp_path_factory.mktemp("cluster")).start() as layout:
        yield layout


@pytest.fixture
def fresh_sentinel(tmp_path: Path) -> Iterator[SentinelLayout]:
    with SentinelLayout(tmp_path / "sentinel").start() as layout:
        yield layout


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ClusterLayout]:
    with ClusterLayout(tmp_path / "cluster").start() as layout:
        yield layout


@pytest.fixture
def prefix() -> str:
    return f"mf-ha-{uuid.uuid4().hex[:10]}"
