"""The fixtures other tests stand on: they must talk to real servers."""

from __future__ import annotations

import smtplib

import redis
from conftest import SmtpSink
from factories import message, message_bytes, photo_like


def test_redis_fixture_is_real_and_prefixed(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(f"{redis_prefix}:probe", b"1")
    assert client.get(f"{redis_prefix}:probe") == b"1"
    client.close()


def test_smtp_sink_records_envelope_and_exact_bytes(smtp_sink: SmtpSink) -> None:
    raw = message_bytes(message(subject="harness"))
    assert b"\r\n" in raw
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], raw)
    [got] = smtp_sink.wait_for(1)
    assert got.mail_from == "alice@example.org"
    assert got.rcpt_tos == ["bob@example.net"]
    assert got.data == raw


def test_generated_images_are_deterministic_and_distinct() -> None:
    a, b, c = photo_like(1), photo_like(1), photo_like(2)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
