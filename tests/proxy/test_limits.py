"""Connection, concurrency and idle limits of the proxy, over real sockets:
`max_connections` (one more connection: 421 at connect), `max_concurrent_messages` (more
messages wait for a slot, none lost), `command_timeout` (an idle client: 421, closed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from factories import message, message_bytes
from waiting import wait_until

from proxy.proxy_harness import RawClient, RecordingSink, RunningProxy

Factory = Callable[..., RunningProxy]


_eventually = wait_until


def test_max_connections(proxy_factory: Factory, recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address, smtp={"max_connections": 2})
    first, second = RawClient(p.host, p.port), RawClient(p.host, p.port)
    assert first.greeting.startswith("220") and second.greeting.startswith("220")
    third = RawClient(p.host, p.port)
    assert third.greeting.startswith("421 4.7.0")
    with pytest.raises(ConnectionError):  # and closed
        third.read_reply()
    third.close()
    assert first.cmd("NOOP").startswith("250")  # the others go on
    assert second.cmd("EHLO client.test").startswith("250")
    second.cmd("QUIT")
    second.close()
    assert _eventually(lambda: len(p.proxy.sessions) == 1)
    again = RawClient(p.host, p.port)  # a freed place is taken again
    assert again.greeting.startswith("220")
    assert 'mailfilter_errors_total{reason="too-many-connections"} 1.0' in \
        p.metrics.render().decode()
    for c in (first, again):
        c.close()


def _send_one(p: RunningProxy, i: int, replies: dict[int, str]) -> None:
    c = RawClient(p.host, p.port)
    try:
        c.cmd("EHLO client.test")
        c.cmd(f"MAIL FROM:<s{i}@example.org>")
        c.cmd("RCPT TO:<b@example.net>")
        c.cmd("DATA")
        c.send(message_bytes(message(subject=f"concurrent {i}")) + b".\r\n")
        replies[i] = c.read_reply()
    finally:
        c.close()


@pytest.mark.parametrize(("limit", "peak"), [(1, (1, 1)), (3, (2, 3))])
def test_max_concurrent_messages(proxy_factory: Factory, recording_sink: RecordingSink,
                                 limit: int, peak: tuple[int, int]) -> None:
    """Five messages at once through a slow next hop: at most `limit` are relayed at a
    time, the others wait for a slot; every one is answered 250 and delivered once."""
    recording_sink.data_delay = 0.3
    p = proxy_factory(recording_sink.address, smtp={"max_concurrent_messages": limit})
    replies: dict[int, str] = {}
    threads = [threading.Thread(target=_send_one, args=(p, i, replies)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(replies) == list(range(5))
    assert all(r.startswith("250") for r in replies.values()), replies
    got = recording_sink.wait_for(5)
    assert sorted(m.mail for m in got) == [f"MAIL FROM:<s{i}@example.org>" for i in range(5)]
    assert peak[0] <= recording_sink.peak_in_data <= peak[1]


def test_idle_client_disconnected_with_421(proxy_factory: Factory,
                                           recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address, smtp={"command_timeout": 1.0})
    idle = RawClient(p.host, p.port, timeout=10)
    idle.cmd("EHLO client.test")
    started = time.monotonic()
    assert idle.read_reply().startswith("421 4.4.2")
    assert 0.8 < time.monotonic() - started < 5
    with pytest.raises(ConnectionError):
        idle.read_reply()
    idle.close()
    assert _eventually(lambda: not p.proxy.sessions)


def test_stalled_data_disconnected_and_not_relayed(proxy_factory: Factory,
                                                   recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address, smtp={"command_timeout": 1.0})
    c = RawClient(p.host, p.port, timeout=10)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@example.org>")
    c.cmd("RCPT TO:<b@example.net>")
    assert c.cmd("DATA").startswith("354")
    c.send(b"Subject: half\r\n\r\nthe first half")
    assert c.read_reply().startswith("421 4.4.2")
    c.close()
    time.sleep(0.3)
    assert recording_sink.messages == []


def test_busy_clients_and_slow_messages_not_cut(proxy_factory: Factory,
                                                recording_sink: RecordingSink) -> None:
    """The timeout is per command: a client that keeps talking stays, and a message that
    takes longer than command_timeout at the next hop still gets its answer."""
    recording_sink.data_delay = 1.5
    p = proxy_factory(recording_sink.address, smtp={"command_timeout": 1.0})
    c = RawClient(p.host, p.port, timeout=10)
    c.cmd("EHLO client.test")
    for _ in range(4):
        time.sleep(0.5)
        assert c.cmd("NOOP").startswith("250")
    c.cmd("MAIL FROM:<a@example.org>")
    c.cmd("RCPT TO:<b@example.net>")
    c.cmd("DATA")
    c.send(message_bytes(message(subject="slow next hop")) + b".\r\n")
    assert c.read_reply().startswith("250")
    assert len(recording_sink.wait_for(1)) == 1
    c.close()


def test_reload_while_busy_keeps_the_message_limit(proxy_factory: Factory,
                                                   recording_sink: RecordingSink) -> None:
    """A reload (SIGHUP) with the limit unchanged while a message holds the only slot:
    a message arriving after it still waits (the slot is not handed out twice)."""
    recording_sink.data_delay = 0.8
    p = proxy_factory(recording_sink.address, smtp={"max_concurrent_messages": 1})
    replies: dict[int, str] = {}
    first = threading.Thread(target=_send_one, args=(p, 0, replies))
    first.start()
    assert _eventually(lambda: recording_sink.in_data == 1)
    p.call(lambda: (p.proxy.handler.reconfigure(p.settings, p.proxy.scanner),
                    p.proxy.reconfigure(p.settings)))  # (as the service's reload does)
    second = threading.Thread(target=_send_one, args=(p, 1, replies))
    second.start()
    for t in (first, second):
        t.join(30)
    assert [replies[i][:3] for i in (0, 1)] == ["250", "250"]
    assert len(recording_sink.wait_for(2)) == 2
    assert recording_sink.peak_in_data == 1
