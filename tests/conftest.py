"""Shared fixtures: a real Redis, a real SMTP sink, temp state directories.

Redis: `REDIS_URL` if set, else 127.0.0.1:6379 if it answers, else a `redis-server` started
here on a free port in a temp dir. Every test gets its own key prefix and only its own keys
are deleted afterwards: the Redis may be shared with other users.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from ports import free_port as free_port  # re-exported: harnesses import it from here

TESTS_DIR = Path(__file__).resolve().parent
# Worker processes (forkserver/spawn) import test task modules from here.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

REPO = TESTS_DIR.parent
SHARED = REPO.parent / "shared"

# Every key prefix of this run starts with RUN_PREFIX, so the run can check at its end that
# it left nothing behind in a shared Redis (and touch no other run's keys doing so).
RUN_PREFIX = f"mftest:{uuid.uuid4().hex[:8]}"


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def leftover_keys(url: str) -> list[bytes]:
    """This run's keys still in the Redis at `url`: plain (`mftest:…`) or hash-tagged
    (`{mftest:…}:…`), the way the store lays them out."""
    client = redis.Redis.from_url(url)
    try:
        return [key for pattern in (f"{RUN_PREFIX}*", f"{{{RUN_PREFIX}*")
                for key in client.scan_iter(match=pattern, count=1000)]
    finally:
        client.close()


def _fail_on_leftover_keys(url: str) -> None:
    left = leftover_keys(url)
    if left:
        client = redis.Redis.from_url(url)
        client.delete(*left)
        client.close()
        pytest.fail(f"the tests left {len(left)} keys in the shared Redis, e.g. {left[:3]}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    env = os.environ.get("REDIS_URL")
    if env:
        if not _redis_answers(env):
            pytest.fail(f"REDIS_URL={env} does not answer PING")
        yield env
        _fail_on_leftover_keys(env)
        return
    local = "redis://127.0.0.1:6379/0"
    if _redis_answers(local):
        yield local
        _fail_on_leftover_keys(local)
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("no Redis: set REDIS_URL, run one on 127.0.0.1:6379 or install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mailfilter-redis-") as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not _redis_answers(url):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the redis-server started for the tests did not answer")
            time.sleep(0.05)
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (and only they)."""
    prefix = f"{RUN_PREFIX}:{uuid.uuid4().hex[:12]}"
    yield prefix
    # The store puts every key under the hash tag `{prefix}`; match both spellings.
    client = redis.Redis.from_url(redis_url)
    keys = [key for pattern in (f"{prefix}*", f"{{{prefix}}}*")
            for key in client.scan_iter(match=pattern, count=1000)]
    if keys:
        client.delete(*keys)
    client.close()


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    rcpt_options: list[str]
    data: bytes
    tls: bool = False  # the message came over a STARTTLS-protected connection


@dataclass
class SmtpSink:
    """A real SMTP server standing in for the next hop; it records what it accepts."""

    host: str
    port: int
    messages: list[ReceivedMessage] = field(default_factory=list)
    # Recipients answered with these codes instead of 250 (to test per-recipient results).
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.sink.refuse_rcpt.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.sink.data_reply.startswith("250"):
            self.sink.messages.append(ReceivedMessage(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                mail_options=list(envelope.mail_options),
                rcpt_options=list(envelope.rcpt_options),
                data=bytes(envelope.original_content or b""),
                tls=session.ssl is not None,
            ))
        return self.sink.data_reply


@contextlib.contextmanager
def running_smtp_sink(tls_context: ssl.SSLContext | None = None) -> Iterator[SmtpSink]:
    """An aiosmtpd sink; with `tls_context` it offers STARTTLS (not required)."""
    sink = SmtpSink(host="127.0.0.1", port=free_port())
    controller = Controller(
        _SinkHandler(sink), hostname=sink.host, port=sink.port,
        decode_data=False, enable_SMTPUTF8=True, data_size_limit=200 * 1024 * 1024,
        tls_context=tls_context,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with running_smtp_sink() as sink:
        yield sink


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def pytest_configure(config: pytest.Config) -> None:
    """MAILFILTER_TEST_SANDBOX=1: this test process is held to the workers' file rules
    (sandbox.py) before any test runs, so decoder tests that decode in this process show
    what a confined worker could not read. Writable: a fresh TMPDIR (which holds tmp_path).
    Also readable: all of /proc, since the worker pools started here make rules for their
    own /proc/self (Landlock's rules nest: a worker gets what both allow).
        MAILFILTER_TEST_SANDBOX=1 python -m pytest -p no:cacheprovider tests/extract
    """
    if os.environ.get("MAILFILTER_TEST_SANDBOX") != "1":
        return
    from mailfilter import sandbox

    scratch = tempfile.mkdtemp(prefix="mailfilter-test-sandbox-")
    os.environ["TMPDIR"] = tempfile.tempdir = scratch
    plan = sandbox.plan("require", scratch)
    if not sandbox.confine_files(dataclasses.replace(plan, read=(*plan.read, "/proc"))):
        pytest.exit("MAILFILTER_TEST_SANDBOX=1 needs Landlock (Linux >= 5.13)", returncode=4)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The differential suite's table, when it ran (tests/differential/differential_run.py)."""
    run_module = sys.modules.get("differential_run")
    if run_module is not None:
        run_module.terminal_summary(terminalreporter)
