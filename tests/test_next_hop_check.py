"""actions/next_hop_check.py: whether the next hop greets, and the start-up warning of
`mailfilter serve` when it does not (issue 18: the README's quick start answered every
message 451 4.4.1 with nothing in the start-up log; a milter-only setup's report mail
waited in the outbox with /readyz saying ready and nothing said)."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port
from proxy.proxy_harness import (
    http_get,
    running_sink,
    serving,
    spawn_serve,
    wait_port,
    write_config,
)

from mailfilter.actions.next_hop_check import next_hop_problem


class _Greets(socketserver.StreamRequestHandler):
    greeting = b""

    def handle(self) -> None:
        if self.greeting:
            self.wfile.write(self.greeting)
        self.rfile.readline()  # QUIT, or the client going away


class _Silent(_Greets):
    pass


class _Refuses(_Greets):
    greeting = b"554 5.3.2 not now\r\n"


class _Ok(_Greets):
    greeting = b"220 mx.test ESMTP\r\n"


def test_a_greeting_220_is_fine_anything_else_is_a_problem() -> None:
    with serving(_Ok) as port:
        assert asyncio.run(next_hop_problem(f"127.0.0.1:{port}")) is None
    with serving(_Refuses) as port:
        problem = asyncio.run(next_hop_problem(f"127.0.0.1:{port}"))
        assert problem == "greeted '554 5.3.2 not now', not 220"
    with serving(_Silent) as port:
        problem = asyncio.run(next_hop_problem(f"127.0.0.1:{port}", timeout=0.5))
        assert problem == "no greeting within 0.5 s"
    port = free_port()
    assert asyncio.run(next_hop_problem(f"127.0.0.1:{port}")) == "Connection refused"


@pytest.fixture
def nothing_there() -> Iterator[int]:
    """A port nothing listens on (bound, not listening, for the test's duration)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        yield int(s.getsockname()[1])


def _serve(tmp_path: Path, next_hop: str, listen: str | None = None
           ) -> tuple[subprocess.Popen[bytes], int]:
    metrics = free_port()
    config = write_config(tmp_path, next_hop, free_port(), metrics)
    env = {"MAILFILTER_SMTP__LISTEN": listen} if listen is not None else {}
    proc = spawn_serve(config, tmp_path / "serve.log", env)
    wait_port("127.0.0.1", metrics, proc=proc)
    return proc, metrics


def _readyz(metrics_port: int) -> tuple[int, str]:
    """/readyz once the worker processes are up (they start after the listeners)."""
    deadline = time.monotonic() + 30
    while True:
        answer = http_get(metrics_port, "/readyz")
        if "no worker processes" not in answer[1] or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def test_proxy_start_warns_and_is_not_ready_while_the_next_hop_is_down(
        tmp_path: Path, nothing_there: int) -> None:
    proc, metrics = _serve(tmp_path, f"127.0.0.1:{nothing_there}")
    try:
        log = (tmp_path / "serve.log").read_text()
        assert "next hop not reachable: clean mail is answered 451 4.4.1 until it " \
               "answers" in log, log
        assert f"127.0.0.1:{nothing_there}" in log and "Connection refused" in log
        assert _readyz(metrics) == (503, "next hop not reachable\n")
    finally:
        _stop(proc)


def test_no_warning_when_the_next_hop_answers(tmp_path: Path) -> None:
    with running_sink() as sink:
        proc, metrics = _serve(tmp_path, sink.address)
        try:
            assert _readyz(metrics) == (200, "ready\n")
        finally:
            _stop(proc)
    assert "next hop not reachable" not in (tmp_path / "serve.log").read_text()
