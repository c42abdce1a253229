"""Harness for the quarantine tests: the proxy of tests/proxy (real sockets, real worker
pool) with the service's real report sender on its event loop, a real HTTP server as the
webhook receiver, and the `mailfilter` command run as operators run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from factories import message, message_bytes
from proxy.proxy_harness import KNOWN, RunningProxy

from mailfilter.actions.quarantine import QuarantineStore, StoredEntry
from mailfilter.actions.report import ReportSender
from mailfilter.settings import Settings

REPO = Path(__file__).resolve().parents[2]
Factory = Callable[..., RunningProxy]


def known_message(subject: str = "holiday") -> bytes:
    return message_bytes(message(subject=subject,
                                 attachments=[("beach.jpg", "image/jpeg", KNOWN)]))


def send(p: RunningProxy, raw: bytes, rcpts: tuple[str, ...] = ("bob@example.net",)
         ) -> tuple[int, bytes]:
    """The proxy's (code, text) answer to `raw` sent by a plain SMTP client."""
    with smtplib.SMTP(p.host, p.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@example.org")
        for r in rcpts:
            client.rcpt(r)
        return client.data(raw)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


# --- the proxy with the report sender ------------------------------------------------------


@dataclass
class ReportingProxy:
    proxy: RunningProxy
    sender: ReportSender

    @property
    def settings(self) -> Settings:
        return self.proxy.settings

    @property
    def store(self) -> QuarantineStore:
        return QuarantineStore(self.settings.quarantine)

    def entries(self) -> list[StoredEntry]:
        return list(self.store.entries())

    def wait_reported(self, count: int = 1, timeout: float = 10.0) -> list[StoredEntry]:
        """Until `count` entries exist and the outbox is empty."""
        def done() -> list[StoredEntry] | None:
            entries = self.entries()
            if len(entries) >= count and not self.store.jobs():
                return entries
            return None
        result: list[StoredEntry] = wait_until(done, timeout)
        return result

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sender.stop(), self.proxy.loop).result(10)


@pytest.fixture
def reporting_proxy(proxy_factory: Factory) -> Iterator[Callable[..., ReportingProxy]]:
    """factory(next_hop, **sections): a proxy whose handler wakes a `ReportSender` (the
    service's own) that sends through the proxy's relay pool, as `mailfilter serve` does."""
    running: list[ReportingProxy] = []

    def factory(next_hop: str, **sections: dict[str, Any]) -> ReportingProxy:
        p = proxy_factory(next_hop, **sections)

        async def start() -> ReportSender:
            sender = ReportSender(p.settings, p.relay, p.metrics)
            p.proxy.handler.on_quarantined = sender.wake
            await sender.start()
            return sender

        sender = asyncio.run_coroutine_threadsafe(start(), p.loop).result(10)
        rp = ReportingProxy(p, sender)
        running.append(rp)
        return rp

    yield factory
    for rp in running:
        with contextlib.suppress(Exception):
            rp.stop()


# --- a webhook receiver ------------------------------------------------------------------------


@dataclass
class WebhookRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """A real HTTP server. It answers `status` (after `delay` seconds); the first `fail`
    requests get 503."""

    port: int = 0
    requests: list[WebhookRequest] = field(default_factory=list)
    fail: int = 0
    delay: float = 0.0
    status: int = 204
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/mailfilter"

    def answered(self) -> list[WebhookRequest]:
        with self.lock:
            return list(self.requests)


@contextlib.contextmanager
def running_webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests.append(WebhookRequest(self.path, dict(self.headers), body))
                failing = len(receiver.requests) <= receiver.fail
            if receiver.delay:
                time.sleep(receiver.delay)
            self.send_response(503 if failing else receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with running_webhook() as receiver:
        yield receiver


# --- the command line -----------------------------------------------------------------------------


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def mf(*args: str, env: dict[str, str] | None = None, timeout: float = 60
       ) -> subprocess.CompletedProcess[str]:
    """`mailfilter ARGS...` as a subprocess (not on a terminal)."""
    return subprocess.run([sys.executable, "-m", "mailfilter", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "USER": "tester", **(env or {})})


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
