"""Reports end to end: a matching message through the real proxy is quarantined and the
service's report sender delivers its report by mail through the next hop (the test sink),
into the report directory, to a webhook (a real HTTP server) and into the shared index
(the real Redis). Failures are retried from the durable outbox and never touch the reply
to the client."""

from __future__ import annotations

import base64
import email
import hashlib
import json
import re
import stat
import time
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import redis
from factories import message, message_bytes
from proxy.proxy_harness import KNOWN, free_port

from mailfilter.actions.report import verify_webhook
from mailfilter.redis_connection import KeyLayout
from quarantine.quarantine_harness import (
    ReportingProxy,
    WebhookReceiver,
    known_message,
    send,
    wait_until,
)

SECRET = "a-test-secret-of-some-length"


def image_traces(eml: bytes) -> list[bytes]:
    """Pieces of the quarantined image as they could leak: its raw bytes, and its base64
    lines as they appear in the quarantined message."""
    lines = [line for line in eml.split(b"\r\n")
             if len(line) >= 60 and re.fullmatch(rb"[A-Za-z0-9+/=]+", line)]
    assert len(lines) > 10  # the image really is in the quarantined message
    encoded = base64.b64encode(KNOWN)
    return [KNOWN[:48], KNOWN[len(KNOWN) // 2: len(KNOWN) // 2 + 48], encoded[:60],
            encoded[3000:3060], *lines]


def parse_report(data: bytes) -> tuple[str, dict[str, Any], EmailMessage]:
    msg = email.message_from_bytes(data, policy=default)
    assert isinstance(msg, EmailMessage)
    text_part = msg.get_body(("plain",))
    assert text_part is not None
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_content_type() == "application/json"
    doc = json.loads(attachment.get_content())
    return text_part.get_content(), doc, msg


def test_quarantined_message_reported_by_mail_dir_webhook_and_index(
        reporting_proxy: Any, smtp_sink: Any, webhook: WebhookReceiver, tmp_path: Path,
        redis_url: str, redis_prefix: str) -> None:
    rp: ReportingProxy = reporting_proxy(
        smtp_sink.address,
        report={"to": ["abuse@example.org", "legal@example.org"],
                "from": "mailfilter@example.org", "dir": str(tmp_path / "reports"),
                "webhook_url": webhook.url, "webhook_secret": SECRET},
        store={"redis_url": redis_url, "key_prefix": redis_prefix},
        quarantine={"instance_name": "mx-test"})
    raw = known_message()
    code, text = send(rp.proxy, raw, rcpts=("bob@example.net", "carol@example.net"))
    assert code == 250, text
    [entry] = rp.wait_reported()
    assert entry.message_path.read_bytes() == raw
    record = entry.record.to_json()
    assert record["id"] in text.decode()
    assert record["host"] == "mx-test"
    assert record["status"] == "reported"
    assert [h["event"] for h in record["history"]] == ["quarantined", "reported"]
    assert record["history"][1]["mail_to"] == ["abuse@example.org", "legal@example.org"]
    assert record["history"][1]["webhook"] == webhook.url  # (no query or secrets in it)

    # The mail: one report (the quarantined message itself is not relayed), through the
    # next hop, from and to the configured addresses.
    [got] = smtp_sink.wait_for(1)
    assert got.mail_from == "mailfilter@example.org"
    assert got.rcpt_tos == ["abuse@example.org", "legal@example.org"]
    body, doc, msg = parse_report(got.data)
    assert msg["Subject"] == f"[mailfilter] quarantined {record['id']}: match in stand-ins"
    assert msg["Auto-Submitted"] == "auto-generated"
    sha256 = hashlib.sha256(KNOWN).hexdigest()
    for expected in (record["id"], "alice@example.org", "bob@example.net, carol@example.net",
                     "holiday", "stand-ins", sha256, hashlib.md5(KNOWN).hexdigest(),
                     "beach.jpg", "[127.0.0.1]"):
        assert expected in body, expected
    assert doc["type"] == "mailfilter.quarantine-report" and doc["id"] == record["id"]
    assert doc["host"] == "mx-test"
    assert doc["envelope"] == {"mail_from": "alice@example.org",
                               "rcpt_tos": ["bob@example.net", "carol@example.net"]}
    [match] = doc["matches"]
    assert (match["list"], match["algorithm"], match["labels"]) == ("stand-ins", "pdq", ["test"])
    assert match["distance"] <= 2
    [att] = doc["attachments"]
    assert (att["filename"], att["size"], att["sha256"], att["matched"]) == \
        ("beach.jpg", len(KNOWN), sha256, True)
    assert att["sha1"] == hashlib.sha1(KNOWN).hexdigest() and len(att["pdq"]) == 64
    for trace in image_traces(raw):
        assert trace not in got.data

    # The report directory: the same document, 0600.
    written = tmp_path / "reports" / f"{record['id']}.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert json.loads(written.read_bytes()) == doc

    # The webhook: the same document, signed over timestamp and body.
    [hook] = webhook.answered()
    assert hook.path == "/hooks/mailfilter"
    assert json.loads(hook.body) == doc
    assert hook.headers["X-Mailfilter-Event"] == "quarantine-report"
    stamp, signature = hook.headers["X-Mailfilter-Timestamp"], hook.headers[
        "X-Mailfilter-Signature"]
    assert verify_webhook(SECRET, hook.body, stamp, signature, time.time())
    assert not verify_webhook("another secret entirely", hook.body, stamp, signature,
                              time.time())
    assert not verify_webhook(SECRET, hook.body + b" ", stamp, signature, time.time())
    assert not verify_webhook(SECRET, hook.body, stamp, signature, time.time() + 3600)

    # The shared index: a summary with the host that holds the entry.
    client = redis.Redis.from_url(redis_url)
    summary = json.loads(client.hget(KeyLayout(redis_prefix).quarantine, record["id"]))
    client.close()
    assert summary["host"] == "mx-test" and summary["status"] == "reported"
    assert summary["lists"] == ["stand-ins"] and summary["report_pending"] is False

    metrics = rp.proxy.metrics.render().decode()
    for step in ("mail", "dir", "webhook", "status", "index"):
        assert f'mailfilter_report_deliveries_total{{result="ok",step="{step}"}} 1.0' in metrics


def test_failed_step_retried_from_the_outbox_without_repeating_the_others(
        reporting_proxy: Any, smtp_sink: Any, webhook: WebhookReceiver) -> None:
    webhook.fail = 2
    rp: ReportingProxy = reporting_proxy(
        smtp_sink.address,
        report={"to": ["abuse@example.org"], "webhook_url": webhook.url,
                "webhook_secret": SECRET, "retry_min": "0.5s", "retry_max": "1s"})
    code, _ = send(rp.proxy, known_message())
    assert code == 250
    # After the first refusal: the mail is done and remembered, the webhook waits.
    job = wait_until(lambda: next((j for j in rp.store.jobs() if j.attempts), None))
    assert job.done == ["mail"] and job.mail_pending == []
    assert job.last_error.startswith("webhook: webhook answered HTTP 503")
    assert job.next_attempt > job.created
    [entry] = rp.wait_reported(timeout=15)
    assert len(webhook.answered()) == 3
    assert len(smtp_sink.messages) == 1  # the mail went once
    assert entry.record.status == "reported"


def test_report_never_delays_the_reply_and_waits_out_a_refusing_next_hop(
        reporting_proxy: Any, smtp_sink: Any, webhook: WebhookReceiver) -> None:
    webhook.delay = 3.0  # a slow receiver
    smtp_sink.refuse_rcpt = {"abuse@example.org": "451 4.3.0 try again later"}
    rp: ReportingProxy = reporting_proxy(
        smtp_sink.address,
        report={"to": ["abuse@example.org"], "webhook_url": webhook.url,
                "webhook_secret": SECRET, "retry_min": "0.3s", "retry_max": "0.5s"})
    started = time.monotonic()
    code, _ = send(rp.proxy, known_message())
    assert code == 250
    assert time.monotonic() - started < 2.0  # not waiting for the report
    # Mail keeps flowing while the report waits: a clean message is relayed.
    clean = message_bytes(message(subject="clean"))
    code, _ = send(rp.proxy, clean)
    assert code == 250
    wait_until(lambda: any(m.data.endswith(clean) for m in smtp_sink.messages))
    job = wait_until(lambda: next((j for j in rp.store.jobs() if j.attempts >= 2), None))
    assert job.done == [] and job.mail_pending == ["abuse@example.org"]
    assert "451" in (job.last_error or "")
    smtp_sink.refuse_rcpt = {}
    [entry] = rp.wait_reported(timeout=20)
    reports = [m for m in smtp_sink.messages if m.rcpt_tos == ["abuse@example.org"]]
    assert len(reports) == 1
    assert entry.record.status == "reported"
    assert len(webhook.answered()) == 1


def test_redis_down_never_fails_a_quarantine_write(reporting_proxy: Any, smtp_sink: Any
                                                   ) -> None:
    rp: ReportingProxy = reporting_proxy(
        smtp_sink.address,
        store={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "key_prefix": "mfdown"},
        report={"retry_min": "0.2s", "retry_max": "0.3s"})
    started = time.monotonic()
    code, text = send(rp.proxy, known_message())
    assert code == 250, text
    assert time.monotonic() - started < 2.0
    [entry] = rp.entries()
    assert entry.message_path.exists()
    job = wait_until(lambda: next((j for j in rp.store.jobs() if j.attempts), None))
    assert job.steps == ["index"] and job.last_error.startswith("index:")
    metrics = rp.proxy.metrics.render().decode()
    assert 'mailfilter_errors_total{reason="quarantine-index"}' in metrics
    assert 'mailfilter_report_deliveries_total{result="failed",step="index"}' in metrics
