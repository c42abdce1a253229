"""Fixtures of the CyberTipline tests: the stand-in NCMEC service (ncmec_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cybertip.ncmec_server import NcmecServer, running_ncmec_server


@pytest.fixture
def ncmec() -> Iterator[NcmecServer]:
    with running_ncmec_server() as server:
        yield server
