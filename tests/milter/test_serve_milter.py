"""`mailfilter serve` with the milter: milter only (`[smtp] listen` empty) on a unix socket,
SIGHUP, metrics and readiness, SIGTERM; both front ends at once, sharing one message limit;
nothing to serve."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from factories import message, message_bytes
from proxy.proxy_harness import (
    KNOWN,
    RawClient,
    enroll,
    free_port,
    http_get,
    running_sink,
    spawn_serve,
    wait_port,
    write_config,
)

from milter.milter_client import ACCEPT, QUARANTINE, REPLYCODE, MilterClient, wait_for
from milter.milter_harness import clean_message, matching_message


def _config(tmp_path: Path, milter: str, smtp_port: int, metrics_port: int,
            policy: str = "quarantine") -> Path:
    return write_config(tmp_path, "127.0.0.1:9", smtp_port, metrics_port, sections=f"""
[milter]
listen = "{milter}"
[policy]
on_match = "{policy}"
""")


def _serve(config: Path, tmp_path: Path, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    return spawn_serve(config, tmp_path / "serve.log", env)


def _log(tmp_path: Path) -> str:
    return (tmp_path / "serve.log").read_text(errors="replace")


def _session(address: tuple[str, int] | str) -> MilterClient:
    c = MilterClient(address)
    c.negotiate()
    c.run(c.session_packets())
    return c


def test_milter_only_on_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "milter.sock"
    metrics_port = free_port()
    config = _config(tmp_path, f"unix:{sock}", free_port(), metrics_port)
    image = tmp_path / "known.jpg"
    image.write_bytes(KNOWN)
    enroll(config, image)
    proc = _serve(config, tmp_path, {"MAILFILTER_SMTP__LISTEN": ""})
    try:
        wait_port("127.0.0.1", metrics_port, proc=proc)
        assert wait_for(sock.exists, 30), _log(tmp_path)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        c = _session(str(sock))
        assert c.send_message(clean_message())[-1] == (ACCEPT, b"")
        assert c.send_message(matching_message())[0][0] == QUARANTINE
        assert http_get(metrics_port, "/metrics")[0] == 200
        text = http_get(metrics_port, "/metrics")[1]
        assert "mailfilter_milter_connections 1.0" in text
        assert 'mailfilter_messages_total{action="quarantine",verdict="match"} 1.0' in text
        # No SMTP proxy: the next hop (127.0.0.1:9 answers nothing) carries only report
        # mail and releases, so it is ready, with a warning line saying what waits.
        assert http_get(metrics_port, "/readyz") == (
            200, "ready\nwarning: next hop 127.0.0.1:9 not reachable: report mail and "
            "releases wait\n")
        # ... and the start-up log said so, with what that costs in this placement
        assert "next hop not reachable: report mail waits in the outbox" in _log(tmp_path)
        c.close()

        # SIGHUP: the new policy applies to the next message
        _config(tmp_path, f"unix:{sock}", free_port(), metrics_port, policy="reject")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "settings reloaded" in _log(tmp_path), 30), _log(tmp_path)
        c = _session(str(sock))
        [(code, data)] = c.send_message(matching_message())
        assert code == REPLYCODE and data.startswith(b"550 5.7.1")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not sock.exists()  # removed on shutdown
    assert "listening" in _log(tmp_path) and "mailfilter.smtp" not in _log(tmp_path)


def test_proxy_and_milter_together(tmp_path: Path) -> None:
    smtp_port, metrics_port, milter_port = free_port(), free_port(), free_port()
    config = _config(tmp_path, f"inet:127.0.0.1:{milter_port}", smtp_port, metrics_port)
    proc = _serve(config, tmp_path)
    try:
        wait_port("127.0.0.1", smtp_port, proc=proc)
        wait_port("127.0.0.1", milter_port, proc=proc)
        c = _session(("127.0.0.1", milter_port))
        assert c.send_message(clean_message())[-1] == (ACCEPT, b"")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 20


def test_proxy_and_milter_share_one_message_limit(tmp_path: Path) -> None:
    """`max_concurrent_messages` is one limit for the service, whatever listens: with a
    limit of 1, a milter message waits while a proxy message holds the slot (each front end
    had a limit of its own once, so two listeners silently doubled it). The deadline's
    deprecated place, `[smtp] scan_timeout`, is still read, with a warning."""
    smtp_port, metrics_port, milter_port = free_port(), free_port(), free_port()
    replies: list[str] = []

    def through_the_proxy() -> None:
        c = RawClient("127.0.0.1", smtp_port)
        try:
            for line in ("EHLO client.test", "MAIL FROM:<a@example.org>",
                         "RCPT TO:<b@example.net>", "DATA"):
                c.cmd(line)
            c.send(message_bytes(message(subject="through the proxy")) + b".\r\n")
            replies.append(c.read_reply())
        finally:
            c.close()

    with running_sink() as sink:
        sink.data_delay = 2.0  # the proxy's message holds its slot this long
        config = write_config(
            tmp_path, f"127.0.0.1:{sink.port}", smtp_port, metrics_port,
            extra='max_concurrent_messages = 1\nscan_timeout = "30s"',
            sections=f'[milter]\nlisten = "inet:127.0.0.1:{milter_port}"\n')
        proc = _serve(config, tmp_path)
        try:
            wait_port("127.0.0.1", smtp_port, proc=proc)
            wait_port("127.0.0.1", milter_port, proc=proc)
            c = _session(("127.0.0.1", milter_port))
            proxied = threading.Thread(target=through_the_proxy)
            proxied.start()
            assert wait_for(lambda: sink.in_data == 1, 30), _log(tmp_path)
            answers = c.send_message(clean_message())
            # The next hop had answered the proxy's message (so its slot was free again)
            # before the milter's message was handled.
            assert len(sink.messages) == 1, "the milter did not wait for the one slot"
            assert answers[-1] == (ACCEPT, b"")
            c.close()
            proxied.join(30)
            assert [r[:3] for r in replies] == ["250"]
            assert "[smtp] scan_timeout is deprecated, read as [scan] timeout" in _log(tmp_path)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_nothing_to_serve(tmp_path: Path) -> None:
    config = _config(tmp_path, "", free_port(), free_port())
    run = subprocess.run([sys.executable, "-m", "mailfilter", "serve", "--config", str(config)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MAILFILTER_SMTP__LISTEN": ""})
    assert run.returncode == 2
    assert "[smtp] listen and [milter] listen are both empty" in run.stderr


def test_milter_only_sighup_moves_report_mail_to_a_new_next_hop(tmp_path: Path) -> None:
    """A milter-only instance has no proxy to reconfigure its relay pool, which also carries
    report mail: a changed `[smtp] next_hop` must apply on SIGHUP (issue 18, item 1)."""
    sock = tmp_path / "milter.sock"
    metrics_port, smtp_port = free_port(), free_port()
    report = '[report]\nto = ["abuse@example.org"]\nfrom = "mailfilter@example.org"\n'
    milter = f'[milter]\nlisten = "unix:{sock}"\n[policy]\non_match = "quarantine"\n'
    config = write_config(tmp_path, "127.0.0.1:9", smtp_port, metrics_port,
                          sections=milter + report)
    image = tmp_path / "known.jpg"
    image.write_bytes(KNOWN)
    enroll(config, image)
    with running_sink() as sink:
        proc = _serve(config, tmp_path, {"MAILFILTER_SMTP__LISTEN": ""})
        try:
            wait_port("127.0.0.1", metrics_port, proc=proc)
            assert wait_for(sock.exists, 30), _log(tmp_path)
            write_config(tmp_path, f"127.0.0.1:{sink.port}", smtp_port, metrics_port,
                         sections=milter + report)
            proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "settings reloaded" in _log(tmp_path), 30), _log(tmp_path)
            c = _session(str(sock))
            assert c.send_message(matching_message())[0][0] == QUARANTINE
            c.close()
            assert wait_for(lambda: any("abuse@example.org" in " ".join(m.rcpts)
                                        for m in sink.messages), 60), _log(tmp_path)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
