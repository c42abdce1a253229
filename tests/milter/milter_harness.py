"""Harness for the milter tests: the milter server on its own event loop in a thread
(real sockets, real worker pool, real scanner and quarantine), as `proxy_harness` does for
the SMTP proxy, and ready-made messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from factories import message, message_bytes
from proxy.proxy_harness import (
    KNOWN,
    IndexBox,
    free_port,
    known_index,
    loop_in_thread,
    make_settings,
)

from mailfilter.actions.quarantine import QuarantineStore
from mailfilter.frontend.milter import MilterServer
from mailfilter.frontend.milter_protocol import MAX_PACKET
from mailfilter.handling import MessageHandler
from mailfilter.matching.cache import MemoryVerdictCache
from mailfilter.metrics import Metrics
from mailfilter.scanner import Scanner
from mailfilter.settings import Settings, parse_milter_listen
from mailfilter.workers import WorkerPool


def clean_message(subject: str = "clean") -> bytes:
    return message_bytes(message(subject=subject, body="Hello,\nnothing to see.\n"))


def matching_message(subject: str = "match") -> bytes:
    return message_bytes(message(subject=subject, attachments=[
        ("holiday.jpg", "image/jpeg", KNOWN)]))


@dataclass
class RunningMilter:
    settings: Settings
    server: MilterServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    index: IndexBox
    metrics: Metrics

    @property
    def address(self) -> tuple[str, int] | str:
        """(host, port) of an inet listener, or the path of a unix one."""
        where = parse_milter_listen(self.settings.milter.listen)
        if where.path is not None:
            return str(where.path)
        assert where.host is not None and where.port is not None
        return where.host, where.port

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.settings.quarantine.path)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.quarantine_dir.glob("*/*.json"))]

    def quarantined_messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.quarantine_dir.glob("*/*.eml"))]

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def drain(self, timeout: float = 2.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.drain(timeout), self.loop).result(
            timeout + 15)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.drain()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def start_milter(settings: Settings, pool: WorkerPool, index: IndexBox,
                 max_packet: int = MAX_PACKET) -> RunningMilter:
    metrics = Metrics()

    async def setup() -> dict[str, Any]:
        scanner = Scanner(settings, pool, index,
                          cache=MemoryVerdictCache(settings.store.cache_ttl))
        handler = MessageHandler(settings, scanner, QuarantineStore(settings.quarantine),
                                 metrics)
        server = MilterServer(settings, handler, max_packet=max_packet)
        await server.start()
        return {"server": server}

    loop, thread, ready = loop_in_thread(setup, "milter-under-test")
    return RunningMilter(settings, ready["server"], loop, thread, index, metrics)


def milter_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    milter = {"listen": f"inet:127.0.0.1:{free_port()}", **sections.pop("milter", {})}
    # (the proxy's next hop is never used by the milter)
    return make_settings(tmp_path, "127.0.0.1:9", milter=milter, **sections)


@pytest.fixture
def milter_factory(tmp_path: Path, worker_pool: WorkerPool
                   ) -> Iterator[Callable[..., RunningMilter]]:
    running: list[RunningMilter] = []
    index = known_index()

    def factory(max_packet: int = MAX_PACKET, **sections: dict[str, Any]) -> RunningMilter:
        m = start_milter(milter_settings(tmp_path, **sections), worker_pool, IndexBox(index),
                         max_packet)
        running.append(m)
        return m

    yield factory
    for m in running:
        m.stop()
