"""Harness for the proxy tests (fixtures registered by conftest.py): the proxy on its own
event loop in a thread (real sockets, real worker pool, real relay), a recording next hop,
a raw SMTP client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from factories import jpeg
from ports import free_port as free_port  # re-exported: harnesses import it from here

from mailfilter.actions.quarantine import QuarantineStore
from mailfilter.actions.relay import RelayPool
from mailfilter.errors import TemporaryFailure
from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.frontend.smtp import SmtpProxy
from mailfilter.handling import MessageHandler
from mailfilter.matching.cache import MemoryVerdictCache
from mailfilter.matching.index import HashIndex, IndexEntry
from mailfilter.metrics import Metrics
from mailfilter.scanner import Scanner
from mailfilter.settings import Settings, load_settings
from mailfilter.workers import WorkerPool

KNOWN = jpeg(42)  # the enrolled stand-in image (benign, generated)


def known_index() -> HashIndex:
    settings = load_settings(None, {}).settings
    fp = fingerprint_image(KNOWN, FingerprintParams.from_settings(settings))
    assert fp.primary is not None and fp.primary.pdq is not None
    return HashIndex.build([IndexEntry("stand-ins", "pdq", fp.primary.pdq, ("test",))])


class IndexBox:
    """The scanner's index provider; `fail` makes it raise like a store that never loaded."""

    def __init__(self, index: HashIndex) -> None:
        self.index = index
        self.fail = False

    def __call__(self) -> HashIndex:
        if self.fail:
            raise TemporaryFailure("index-not-loaded", "test")
        return self.index


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def make_settings(tmp_path: Path, next_hop: str, **sections: dict[str, Any]) -> Settings:
    data: dict[str, Any] = {
        "smtp": {"listen": f"127.0.0.1:{free_port()}", "next_hop": next_hop,
                 "hostname": "mailfilter.test", "next_hop_timeout": 5.0,
                 "command_timeout": 30.0},
        "store": {"path": str(tmp_path / "store")},
        "quarantine": {"path": str(tmp_path / "quarantine")},
        "workers": {"processes": 2},
    }
    return Settings.model_validate(_merge(data, sections))


@dataclass
class RunningProxy:
    settings: Settings
    proxy: SmtpProxy
    relay: RelayPool
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    index: IndexBox
    metrics: Metrics

    @property
    def host(self) -> str:
        return self.settings.smtp.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.settings.smtp.listen.rsplit(":", 1)[1])

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.settings.quarantine.path)

    def quarantined(self) -> list[Path]:
        return sorted(self.quarantine_dir.glob("*/*.json"))

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        async def down() -> None:
            await self.proxy.drain(2.0)
            await self.relay.close()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def loop_in_thread(setup: Callable[[], Awaitable[dict[str, Any]]], name: str
                   ) -> tuple[asyncio.AbstractEventLoop, threading.Thread, dict[str, Any]]:
    """An event loop running in a daemon thread, after `setup()` ran in it; what setup
    returned. Its exception is raised here (the loop closed)."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            ready.update(loop.run_until_complete(setup()))
        except BaseException as exc:
            ready["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    started.wait(20)
    if "error" in ready:
        thread.join(5)
        loop.close()
        raise ready["error"]
    return loop, thread, ready


def start_proxy(settings: Settings, pool: WorkerPool, index: IndexBox) -> RunningProxy:
    metrics = Metrics()

    async def setup() -> dict[str, Any]:
        relay = RelayPool(settings.smtp, "mailfilter.test")
        cache = MemoryVerdictCache(settings.store.cache_ttl)
        scanner = Scanner(settings, pool, index, cache=cache)
        handler = MessageHandler(settings, scanner, QuarantineStore(settings.quarantine),
                                 metrics)
        proxy = SmtpProxy(settings, handler, relay)
        await proxy.start()
        return {"proxy": proxy, "relay": relay}

    loop, thread, ready = loop_in_thread(setup, "proxy-under-test")
    return RunningProxy(settings, ready["proxy"], ready["relay"], loop, thread, index, metrics)


@pytest.fixture(scope="module")  # closed before other modules count child processes
def worker_pool() -> Iterator[WorkerPool]:
    with WorkerPool(processes=2, memory_limit=1024**3) as pool:
        yield pool


@pytest.fixture
def proxy_factory(tmp_path: Path, worker_pool: WorkerPool
                  ) -> Iterator[Callable[..., RunningProxy]]:
    running: list[RunningProxy] = []
    index = known_index()

    def factory(next_hop: str, **sections: dict[str, Any]) -> RunningProxy:
        settings = make_settings(tmp_path, next_hop, **sections)
        p = start_proxy(settings, worker_pool, IndexBox(index))
        running.append(p)
        return p

    yield factory
    for p in running:
        p.stop()


# --- a next hop that records everything, and reads lines the lenient way ------------------


@dataclass
class SinkMessage:
    mail: str
    rcpts: list[str]
    xforward: list[str]
    data: bytes


@dataclass
class RecordingSink:
    """A next hop that advertises DSN, SMTPUTF8, 8BITMIME, SIZE and XFORWARD and records
    command lines, connections and messages. Like many MTAs it takes a bare LF as a line end,
    so relayed bytes that let `\\n.\\r\\n` end the DATA would show up as a second message."""

    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    messages: list[SinkMessage] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued as SINK1"
    data_delay: float = 0.0  # seconds before answering the end of DATA (a slow next hop)
    in_data: int = 0  # connections between DATA and its answer now, and the most seen
    peak_in_data: int = 0
    ehlo: tuple[str, ...] = ("PIPELINING", "SIZE 100000000", "8BITMIME", "SMTPUTF8", "DSN",
                             "ENHANCEDSTATUSCODES", "XFORWARD NAME ADDR PROTO HELO IDENT "
                             "SOURCE PORT")
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages


def _sink_handler(sink: RecordingSink) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")
            self.wfile.flush()

        def data(self, mail: str, rcpts: list[str], xforward: list[str]) -> bool:
            """DATA to its answer; False when the client went away. Counted in `in_data`
            until just before the answer is sent (so the count is never behind what the
            client can see)."""
            with sink.lock:
                sink.in_data += 1
                sink.peak_in_data = max(sink.peak_in_data, sink.in_data)
            try:
                self.reply("354 go ahead")
                lines_in: list[bytes] = []
                while True:
                    d = self.rfile.readline()
                    if not d:
                        return False
                    if d in (b".\r\n", b".\n"):
                        break
                    lines_in.append(d[1:] if d.startswith(b".") else d)
                if sink.data_delay:
                    time.sleep(sink.data_delay)
            finally:
                with sink.lock:
                    sink.in_data -= 1
            if sink.data_reply.startswith("250"):
                with sink.lock:
                    sink.messages.append(SinkMessage(mail, rcpts, xforward,
                                                     b"".join(lines_in)))
            self.reply(sink.data_reply)
            return True

        def handle(self) -> None:
            with sink.lock:
                sink.connections += 1
            self.reply("220 sink.test ESMTP")
            mail, rcpts, xforward = "", [], []
            while True:
                raw = self.rfile.readline()
                if not raw:
                    return
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                with sink.lock:
                    sink.commands.append(line)
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    lines = ["sink.test", *sink.ehlo]
                    for x in lines[:-1]:
                        self.wfile.write(f"250-{x}\r\n".encode())
                    self.reply(f"250 {lines[-1]}")
                elif verb == "XFORWARD":
                    xforward.append(line)
                    self.reply("250 2.0.0 Ok")
                elif verb == "MAIL":
                    mail, rcpts = line, []
                    self.reply("250 2.1.0 Ok")
                elif verb == "RCPT":
                    addr = line.split("<", 1)[1].split(">", 1)[0]
                    answer = sink.rcpt_replies.get(addr, "250 2.1.5 Ok")
                    if answer.startswith("250"):
                        rcpts.append(line)
                    self.reply(answer)
                elif verb == "DATA":
                    if not self.data(mail, rcpts, xforward):
                        return
                    mail, rcpts, xforward = "", [], []
                elif verb == "RSET":
                    mail, rcpts, xforward = "", [], []
                    self.reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    self.reply("221 2.0.0 Bye")
                    return
                elif verb == "NOOP":
                    self.reply("250 2.0.0 Ok")
                else:
                    self.reply("502 5.5.2 unknown")

    return Handler


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def serving(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    """A threaded TCP server on a free loopback port for the test's duration; yields the port."""
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def running_sink() -> Iterator[RecordingSink]:
    sink = RecordingSink()
    with serving(_sink_handler(sink)) as port:
        sink.port = port
        yield sink


@pytest.fixture
def recording_sink() -> Iterator[RecordingSink]:
    with running_sink() as sink:
        yield sink


# --- a raw client: exact bytes on the wire -------------------------------------------------


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.read_reply()

    def read_reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                raise ConnectionError("connection closed: " + " | ".join(lines))
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read_reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --- TLS: a throwaway self-signed certificate (openssl CLI) ------------------------------


def self_signed_cert(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """(cert, key) PEM files of a fresh self-signed EC certificate for `name` and
    127.0.0.1, valid for a day."""
    import subprocess

    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext",
                    f"subjectAltName=DNS:{name},IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key


# --- `mailfilter serve` as a subprocess -----------------------------------------------------


def spawn_serve(config: Path, log: Path, env: Mapping[str, str] | None = None,
                base_env: Mapping[str, str] | None = None, **popen: Any
                ) -> subprocess.Popen[bytes]:
    """`mailfilter serve --config CONFIG` as a subprocess, stdout and stderr appended to
    `log`; its environment `base_env` (default: ours) with `env` over it. `popen`: more
    subprocess.Popen arguments (start_new_session, preexec_fn)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mailfilter", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**(os.environ if base_env is None else base_env), **(env or {})}, **popen)


def wait_port(host: str, port: int, timeout: float = 30.0,
              proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port}")


def write_config(tmp_path: Path, next_hop: str, listen_port: int, metrics_port: int,
                 extra: str = "", sections: str = "", reload_interval: str = "1s") -> Path:
    """`extra`: more [smtp] keys; `sections`: more tables ([policy] ...)."""
    config = tmp_path / "mailfilter.toml"
    config.write_text(f"""
[smtp]
listen = "127.0.0.1:{listen_port}"
next_hop = "{next_hop}"
hostname = "mailfilter.test"
next_hop_timeout = "10s"
shutdown_timeout = "20s"
{extra}
[store]
path = "{tmp_path / 'store'}"
reload_interval = "{reload_interval}"
[quarantine]
path = "{tmp_path / 'quarantine'}"
[workers]
processes = 1
[metrics]
listen = "127.0.0.1:{metrics_port}"
{sections}""")
    return config


def enroll(config: Path, image: Path) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "mailfilter", "hashes", "add", "--config",
                    str(config), "--list", "stand-ins", str(image)],
                   check=True, capture_output=True, timeout=60)


def http_get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
