"""A crash at the worst moments of a quarantine write, with `mailfilter serve` as a
subprocess that kills itself (SIGKILL, the test hook MAILFILTER_TEST_CRASH_AFTER) either
right after the whole entry and its report job are on disk but before the 250 is sent
(`quarantine-write`), or after the message file but before its record
(`quarantine-message`). Then: the client saw no 250; the store holds a complete entry or
none; nothing half-written is listed; the outbox is consistent; after a restart the
client's retry is quarantined and every entry on disk is reported. A crash after the write
gives a second entry (and report) for the retried message: duplicates, never loss."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy.proxy_harness import (
    KNOWN,
    RawClient,
    enroll,
    free_port,
    spawn_serve,
    wait_port,
    write_config,
)

from mailfilter.actions.quarantine import CRASH_HOOK_ENV, QuarantineStore
from mailfilter.settings import load_settings
from quarantine.quarantine_harness import json_lines, known_message, mf, wait_until


@contextlib.contextmanager
def serving(config: Path, log: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    port = int(load_settings(config, {}).settings.smtp.listen.rsplit(":", 1)[1])
    # Its own process group: the worker processes go with it however it ends.
    proc = spawn_serve(config, log, {"MAILFILTER_LOGGING__FORMAT": "json", **(env or {})},
                       start_new_session=True)
    try:
        wait_port("127.0.0.1", port, proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def deliver(port: int, raw: bytes) -> str:
    """One SMTP transaction; the final reply, or "" when the connection died first."""
    c = RawClient("127.0.0.1", port)
    try:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<alice@example.org>").startswith("250")
        assert c.cmd("RCPT TO:<bob@example.net>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        c.send(raw + b".\r\n")
        try:
            return c.read_reply()
        except (ConnectionError, OSError):
            return ""
    finally:
        c.close()


@pytest.mark.slow  # serve killed and restarted, per point: about 6 s
@pytest.mark.parametrize("point", ["quarantine-write", "quarantine-message"])
def test_crash_between_quarantine_write_and_reply(point: str, tmp_path: Path,
                                                 smtp_sink: Any) -> None:
    port = free_port()
    config = write_config(tmp_path, smtp_sink.address, port, free_port(), sections="""
[report]
to = ["abuse@example.org"]
from = "mailfilter@example.org"
retry_min = "0.2s"
""")
    image = tmp_path / "known.jpg"
    image.write_bytes(KNOWN)
    enroll(config, image)
    store = QuarantineStore(load_settings(config, {}).settings.quarantine)
    raw = known_message()
    log = tmp_path / "serve.log"

    with serving(config, log, {CRASH_HOOK_ENV: point}) as proc:
        assert deliver(port, raw) == ""  # no reply at all, so certainly no 250
        assert proc.wait(30) == -signal.SIGKILL

    entries = list(store.entries())
    jobs = store.jobs()
    assert not list(store.root.rglob(".*.tmp"))  # every file is whole or absent
    listed = json_lines(mf("quarantine", "list", "--json", "--config", str(config)).stdout)
    if point == "quarantine-write":
        [entry] = entries
        assert entry.message_path.read_bytes() == raw
        assert json.loads(entry.record_path.read_bytes())["matches"][0]["list"] == "stand-ins"
        [job] = jobs
        assert (job.entry_id, job.steps, job.done) == (entry.id, ["mail", "status"], [])
        assert [r["id"] for r in listed] == [entry.id]
        assert listed[0]["report_pending"] is True
    else:
        assert entries == [] and listed == []
        [job] = jobs  # written first; its record never came
        [orphan] = store.root.glob(f"*/{job.entry_id}.eml")  # (purge removes it later)
        assert orphan.read_bytes() == raw
        assert not orphan.with_suffix(".json").exists()

    # Restarted without the hook; the client retries the message it never saw accepted.
    with serving(config, log) as proc:
        assert deliver(port, raw).startswith("250 2.0.0 Ok ")
        expected = 2 if point == "quarantine-write" else 1
        entries = wait_until(lambda: (e := list(store.entries())) and len(e) == expected
                             and not store.jobs() and e, timeout=20)
        reports = smtp_sink.wait_for(expected)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert sorted(e.id for e in entries) == sorted(
        m.data.split(b"X-Mailfilter-Report: ", 1)[1].split(b"\r\n", 1)[0].decode()
        for m in reports)
    assert all(e.record.status == "reported" for e in entries)
    assert all(e.message_path.read_bytes() == raw for e in entries)
    assert all(m.rcpt_tos == ["abuse@example.org"] for m in reports)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    if point == "quarantine-message":
        assert any(x.get("msg", "").startswith("outbox job without its record dropped")
                   for x in lines)
