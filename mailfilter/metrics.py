"""Prometheus metrics, and the HTTP endpoint that serves them with the health checks.

`GET /metrics`  the Prometheus text format (own registry: no process-global state);
`GET /healthz`  200 while the process runs;
`GET /readyz`   200 when the hash index is loaded, the worker pool has live workers and the
                next hop answered recently (or answers a TCP connect now); else 503 with the
                reasons, one per line. When the next hop carries only report mail and
                releases (milter only), its absence is a `warning:` line under a 200
                (actions/next_hop_check.py says why).

The HTTP server is a small asyncio one on the service's event loop: three fixed paths, GET
only, one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailfilter.settings import split_host_port

if TYPE_CHECKING:
    from mailfilter.model import ScanResult
    from mailfilter.scanner import ScanTrace
    from mailfilter.workers import PoolStats

__all__ = ["HealthSource", "Metrics", "MetricsServer"]

log = logging.getLogger("mailfilter.metrics")

STAGES: Final = ("extract", "fingerprint", "match", "relay", "quarantine", "total")
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0, 30.0, 60.0)
NEXT_HOP_RECENT: Final = 60.0  # seconds a successful next-hop exchange counts as "recently"


@dataclass
class HealthSource:
    """Callables the app provides for gauges and /readyz (read at scrape time)."""

    pool_stats: Callable[[], PoolStats]
    index_loaded: Callable[[], bool]
    index_entries: Callable[[], int]
    index_version: Callable[[], int]
    index_stale: Callable[[], bool]
    next_hop_last_ok: Callable[[], float]  # monotonic time, 0: never
    next_hop_probe: Callable[[], Awaitable[bool]]
    connections: Callable[[], int]
    idle_next_hop: Callable[[], int]
    milter_connections: Callable[[], int] | None = None  # None: no milter listener
    # False (milter only): the next hop carries only report mail and releases
    next_hop_carries_mail: bool = True
    next_hop: Callable[[], str] = str


class _StateCollector(Collector):
    def __init__(self, source: HealthSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        s = self.source
        try:
            stats = s.pool_stats()
        except Exception:  # a closed pool: no worker gauges
            stats = None
        if stats is not None:
            workers = GaugeMetricFamily("mailfilter_workers", "Worker pool processes",
                                        labels=["state"])
            workers.add_metric(["configured"], stats.processes)
            workers.add_metric(["alive"], stats.alive)
            workers.add_metric(["busy"], stats.busy)
            yield workers
            yield GaugeMetricFamily("mailfilter_worker_queue", "Tasks waiting for a worker",
                                    value=stats.queued)
            events = CounterMetricFamily("mailfilter_worker_events",
                                         "Worker pool events since start", labels=["event"])
            events.add_metric(["completed"], stats.completed)
            events.add_metric(["crash"], stats.crashes)
            events.add_metric(["timeout"], stats.timeouts)
            events.add_metric(["restart"], stats.restarts)
            events.add_metric(["memory_limit"], stats.memory_limits)
            events.add_metric(["result_refused"], stats.refused)
            yield events
            confined = GaugeMetricFamily(
                "mailfilter_worker_sandbox",
                "1 for what the workers are confined in ([workers] sandbox)",
                labels=["protection"])
            for protection in ("files", "network", "signals"):
                confined.add_metric([protection], float(protection in stats.sandbox))
            yield confined
        yield GaugeMetricFamily("mailfilter_index_loaded", "1 when hash lists are loaded",
                                value=float(s.index_loaded()))
        yield GaugeMetricFamily("mailfilter_index_entries", "Entries in the served index",
                                value=s.index_entries())
        yield GaugeMetricFamily("mailfilter_index_version", "Store version of the served index",
                                value=s.index_version())
        yield GaugeMetricFamily("mailfilter_index_stale",
                                "1 when the store is unreachable and older lists are served",
                                value=float(s.index_stale()))
        yield GaugeMetricFamily("mailfilter_smtp_connections",
                                "Open client connections served (past the max_connections check)",
                                value=s.connections())
        if s.milter_connections is not None:
            yield GaugeMetricFamily("mailfilter_milter_connections",
                                    "Open MTA connections to the milter",
                                    value=s.milter_connections())
        yield GaugeMetricFamily("mailfilter_next_hop_idle_connections",
                                "Idle next-hop connections kept for reuse",
                                value=s.idle_next_hop())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter("mailfilter_messages", "Messages handled",
                                ["verdict", "action"], registry=r)
        self.attachments = Counter("mailfilter_attachments_scanned",
                                   "Images examined (cached: verdict from the cache)",
                                   ["cached"], registry=r)
        self.matches = Counter("mailfilter_matches", "Matches found",
                               ["list", "algorithm"], registry=r)
        self.errors = Counter("mailfilter_errors", "Failures by reason", ["reason"], registry=r)
        self.stage_seconds = Histogram("mailfilter_stage_seconds", "Time per stage of a message",
                                       ["stage"], buckets=BUCKETS, registry=r)
        self.next_hop = Counter("mailfilter_next_hop_connections",
                                "Next-hop connections used (opened or reused)", ["kind"],
                                registry=r)
        self._next_hop_seen = (0, 0)
        self.source: HealthSource | None = None

    def attach(self, source: HealthSource) -> None:
        self.source = source
        self.registry.register(_StateCollector(source))

    def error(self, reason: str) -> None:
        self.errors.labels(reason).inc()

    def message(self, verdict: str | None, action: str, stages: Mapping[str, float]) -> None:
        """One message handled: its verdict (None: no scan result), the action taken and
        the seconds each stage took. Plain values, so this module needs nothing of the
        handling layer that calls it."""
        self.messages.labels(verdict if verdict is not None else "none", action).inc()
        for stage, seconds in stages.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def scanned(self, result: ScanResult, trace: ScanTrace) -> None:
        cached = trace.cache_hits
        fresh = len(result.attachments) - cached
        if fresh:
            self.attachments.labels("false").inc(fresh)
        if cached:
            self.attachments.labels("true").inc(cached)
        for a in result.attachments:
            for m in a.matches:
                self.matches.labels(m.list_name, m.algorithm).inc()

    def next_hop_totals(self, opened: int, reused: int) -> None:
        """Bring the connection counters up to the relay pool's totals."""
        last_opened, last_reused = self._next_hop_seen
        if opened > last_opened:
            self.next_hop.labels("opened").inc(opened - last_opened)
        if reused > last_reused:
            self.next_hop.labels("reused").inc(reused - last_reused)
        self._next_hop_seen = (opened, reused)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def health(self) -> tuple[list[str], list[str]]:
        """Reasons for not being ready (empty: ready), and warnings that do not make it
        not ready."""
        s = self.source
        if s is None:
            return ["starting"], []
        problems: list[str] = []
        warnings: list[str] = []
        if not s.index_loaded():
            problems.append("hash lists not loaded")
        try:
            if s.pool_stats().alive == 0:
                problems.append("no worker processes")
        except Exception:
            problems.append("worker pool closed")
        last = s.next_hop_last_ok()
        recent = bool(last) and time.monotonic() - last < NEXT_HOP_RECENT
        if not recent and not await s.next_hop_probe():
            if s.next_hop_carries_mail:
                problems.append("next hop not reachable")
            else:
                warnings.append(f"warning: next hop {s.next_hop()} not reachable: report "
                                "mail and releases wait")
        return problems, warnings


class MetricsServer:
    def __init__(self, metrics: Metrics, listen: str,
                 before_scrape: Callable[[], None] | None = None) -> None:
        self.metrics = metrics
        self.host, self.port = split_host_port(listen)
        self.before_scrape = before_scrape
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        log.info("metrics listening", extra={"fields": {"listen": f"{self.host}:{self.port}"}})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10.0)
            while True:  # headers, ignored
                line = await asyncio.wait_for(reader.readline(), 10.0)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                if self.before_scrape is not None:
                    self.before_scrape()
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = self.metrics.render()
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                problems, warnings = await self.metrics.health()
                ctype = "text/plain"
                if problems:
                    status = "503 Service Unavailable"
                    body = ("\n".join(problems + warnings) + "\n").encode()
                else:
                    status, body = "200 OK", ("\n".join(["ready", *warnings]) + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + (body if method != "HEAD" else b""))
            await writer.drain()
        except (OSError, TimeoutError, UnicodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
