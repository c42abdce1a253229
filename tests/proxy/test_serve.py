"""`mailfilter serve` as operators run it: a subprocess with the local store (no Redis), the
hash lists enrolled with `mailfilter hashes add`, metrics and health endpoints, and a
SIGTERM that lets the message in flight finish."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import message, message_bytes

from mailfilter import sandbox
from proxy.proxy_harness import (
    KNOWN,
    RawClient,
    enroll,
    free_port,
    http_get,
    spawn_serve,
    wait_port,
    write_config,
)


@pytest.fixture
def served(tmp_path: Path, smtp_sink: Any) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, smtp_sink.address, port, metrics_port)
    image = tmp_path / "known.jpg"
    image.write_bytes(KNOWN)
    enroll(config, image)
    proc = spawn_serve(config, tmp_path / "serve.log", {"MAILFILTER_LOGGING__FORMAT": "json"})
    try:
        wait_port("127.0.0.1", port, proc=proc)
        yield proc, port, metrics_port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _session(port: int, raw: bytes) -> RawClient:
    c = RawClient("127.0.0.1", port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@example.org>").startswith("250")
    assert c.cmd("RCPT TO:<b@example.net>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    c.send(raw)
    return c


def test_serve_scans_relays_quarantines_and_reports(served: Any, smtp_sink: Any,
                                                    tmp_path: Path) -> None:
    proc, port, metrics_port = served
    clean = message_bytes(message(subject="clean"))
    c = _session(port, clean + b".\r\n")
    assert c.read_reply().startswith("250")
    c.close()
    hit = message_bytes(message(subject="hit", attachments=[("k.jpg", "image/jpeg", KNOWN)]))
    c = _session(port, hit + b".\r\n")
    assert c.read_reply().startswith("250")
    c.close()
    assert [m.data for m in smtp_sink.wait_for(1)] == [b"X-Mailfilter: clean\r\n" + clean]
    [record] = (tmp_path / "quarantine").glob("*/*.json")
    assert json.loads(record.read_text())["matches"][0]["list"] == "stand-ins"
    assert http_get(metrics_port, "/healthz")[0] == 200
    assert http_get(metrics_port, "/readyz") == (200, "ready\n")
    status, text = http_get(metrics_port, "/metrics")
    assert status == 200
    assert 'mailfilter_messages_total{action="relay",verdict="clean"} 1.0' in text
    assert 'mailfilter_messages_total{action="quarantine",verdict="match"} 1.0' in text
    assert 'mailfilter_matches_total{algorithm="pdq",list="stand-ins"}' in text
    assert 'mailfilter_stage_seconds_bucket{le="0.005",stage="extract"}' in text
    assert "mailfilter_index_entries" in text and "mailfilter_workers" in text
    for protection in ("files", "network", "signals"):  # the worker sandbox, as far as the
        on = float(protection in sandbox.available())  # kernel offers it
        assert f'mailfilter_worker_sandbox{{protection="{protection}"}} {on}' in text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    lines = [json.loads(x) for x in (tmp_path / "serve.log").read_text().splitlines()
             if x.startswith("{")]
    said = [x["msg"] for x in lines if x.get("msg", "").startswith("worker sandbox: ")]
    assert said == [f"worker sandbox: {sandbox.describe('auto')}"]  # once, at start
    logged = [x for x in lines if x.get("msg") == "message"]
    assert len(logged) == 2
    assert {x["action"] for x in logged} == {"relay", "quarantine"}
    assert all("total_ms" in x and "extract_ms" in x and x["client"] == "127.0.0.1"
               for x in logged)


def test_sigterm_drains_message_in_flight(served: Any, smtp_sink: Any) -> None:
    proc, port, _ = served
    idle = RawClient("127.0.0.1", port)
    idle.cmd("EHLO idle.test")
    raw = message_bytes(message(subject="in flight"))
    busy = _session(port, raw[: len(raw) // 2])  # half of the message sent
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert idle.read_reply().startswith("421")  # an idle session is closed at once
    with pytest.raises(OSError):  # no new connections
        RawClient("127.0.0.1", port, timeout=2).cmd("EHLO late.test")
    assert proc.poll() is None  # still draining
    busy.send(raw[len(raw) // 2:] + b".\r\n")
    assert busy.read_reply().startswith("250")
    assert busy.read_reply().startswith("421")
    assert proc.wait(30) == 0
    [got] = smtp_sink.wait_for(1)
    assert got.data.endswith(raw)
