"""The proxy end to end over real sockets: a real worker pool scans, a real next hop
(aiosmtpd sink, or a recording sink that reads lines the lenient way) receives. Each
failure path: the right reply, and the message neither lost nor duplicated."""

from __future__ import annotations

import json
import smtplib
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories import jpeg, message, message_bytes

from proxy.proxy_harness import KNOWN, RawClient, RecordingSink, RunningProxy, free_port

Factory = Callable[..., RunningProxy]


def photo_message(seed: int = 1, subject: str = "photos") -> bytes:
    return message_bytes(message(subject=subject,
                                 attachments=[(f"p{seed}.jpg", "image/jpeg", jpeg(seed))]))


def known_message() -> bytes:
    return message_bytes(message(subject="holiday",
                                 attachments=[("beach.jpg", "image/jpeg", KNOWN)]))


def send(p: RunningProxy, raw: bytes, rcpts: tuple[str, ...] = ("bob@example.net",),
         sender: str = "alice@example.org") -> tuple[int, bytes]:
    """(code, text) of the DATA reply."""
    with smtplib.SMTP(p.host, p.port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail(sender)
        assert code == 250, text
        for r in rcpts:
            code, text = client.rcpt(r)
            assert code == 250, text
        return client.data(raw)


def test_clean_mail_relayed_byte_identical_with_header(proxy_factory: Factory,
                                                       smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address)
    raw = photo_message(1)
    code, text = send(p, raw, rcpts=("bob@example.net", "carol@example.net"))
    assert code == 250, text
    [got] = smtp_sink.wait_for(1)
    assert got.data == b"X-Mailfilter: clean\r\n" + raw
    assert got.mail_from == "alice@example.org"
    assert got.rcpt_tos == ["bob@example.net", "carol@example.net"]


def test_clean_mail_relayed_unchanged_without_header(proxy_factory: Factory,
                                                     smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address, smtp={"add_header": False})
    # lines that begin with dots must survive dot-stuffing both ways
    raw = message_bytes(message(body=".\n..leading dots\n.\nend\n"))
    code, _ = send(p, raw)
    assert code == 250
    [got] = smtp_sink.wait_for(1)
    assert got.data == raw


def test_esmtp_parameters_and_xforward_passed_on(proxy_factory: Factory,
                                                 recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address)
    raw = photo_message(2)
    c = RawClient(p.host, p.port)
    ehlo = c.cmd("EHLO postfix.test")
    for ext in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "DSN", "XFORWARD",
                "ENHANCEDSTATUSCODES"):
        assert ext in ehlo
    assert "STARTTLS" not in ehlo and "AUTH" not in ehlo
    assert c.cmd("XFORWARD NAME=mx.client.example ADDR=192.0.2.7 PORT=4321").startswith("250")
    assert c.cmd("XFORWARD HELO=helo.client.example IDENT=4AbC12 PROTO=ESMTP "
                 "SOURCE=REMOTE").startswith("250")
    mail = (f"MAIL FROM:<Alice.Smith@example.org> SIZE={len(raw)} BODY=8BITMIME RET=HDRS "
            "ENVID=QQ+2B314")
    assert c.cmd(mail).startswith("250")
    rcpt = "RCPT TO:<Bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@example.net"
    assert c.cmd(rcpt).startswith("250")
    assert c.cmd("DATA").startswith("354")
    c.send(raw + b".\r\n")
    assert c.read_reply().startswith("250 2.0.0")
    c.cmd("QUIT")
    [got] = recording_sink.wait_for(1)
    assert got.mail == mail  # address and parameters exactly as the client gave them
    assert got.rcpts == [rcpt]
    forwarded = " ".join(got.xforward)
    for attr in ("NAME=mx.client.example", "ADDR=192.0.2.7", "PORT=4321",
                 "HELO=helo.client.example", "IDENT=4AbC12", "PROTO=ESMTP", "SOURCE=REMOTE"):
        assert attr in forwarded
    assert got.data == b"X-Mailfilter: clean\r\n" + raw


def test_smtputf8_envelope(proxy_factory: Factory, recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address)
    c = RawClient(p.host, p.port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<jörg@bücher.example> SMTPUTF8").startswith("250")
    assert c.cmd("RCPT TO:<zoë@example.net>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    c.send(message_bytes(message()) + b".\r\n")
    assert c.read_reply().startswith("250")
    [got] = recording_sink.wait_for(1)
    assert got.mail == "MAIL FROM:<jörg@bücher.example> SMTPUTF8"


def test_recipient_refusals_mirrored(proxy_factory: Factory,
                                     recording_sink: RecordingSink) -> None:
    recording_sink.rcpt_replies = {"gone@example.net": "550 5.1.1 <gone@example.net>: unknown",
                                   "full@example.net": "452 4.2.2 mailbox full"}
    p = proxy_factory(recording_sink.address)
    c = RawClient(p.host, p.port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@example.org>").startswith("250")
    assert c.cmd("RCPT TO:<ok@example.net>").startswith("250 2.1.5")
    assert c.cmd("RCPT TO:<gone@example.net>").startswith("550 5.1.1")
    assert c.cmd("RCPT TO:<full@example.net>").startswith("452 4.2.2")
    assert c.cmd("DATA").startswith("354")
    c.send(message_bytes(message()) + b".\r\n")
    assert c.read_reply().startswith("250")
    [got] = recording_sink.wait_for(1)
    assert got.rcpts == ["RCPT TO:<ok@example.net>"]


def test_no_accepted_recipient_no_data(proxy_factory: Factory,
                                       recording_sink: RecordingSink) -> None:
    recording_sink.rcpt_replies = {"gone@example.net": "550 5.1.1 unknown"}
    p = proxy_factory(recording_sink.address)
    c = RawClient(p.host, p.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@example.org>")
    assert c.cmd("RCPT TO:<gone@example.net>").startswith("550")
    assert c.cmd("DATA").startswith("554 5.5.1")
    assert recording_sink.messages == []


def test_lmtp_one_reply_per_recipient(proxy_factory: Factory,
                                      recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address, smtp={"protocol": "lmtp"})
    c = RawClient(p.host, p.port)
    assert c.cmd("EHLO client.test").startswith("500")
    assert c.cmd("LHLO client.test").startswith("250")
    c.cmd("MAIL FROM:<a@example.org>")
    c.cmd("RCPT TO:<one@example.net>")
    c.cmd("RCPT TO:<two@example.net>")
    assert c.cmd("DATA").startswith("354")
    c.send(message_bytes(message()) + b".\r\n")
    assert c.read_reply().startswith("250")
    assert c.read_reply().startswith("250")
    assert len(recording_sink.wait_for(1)) == 1


def test_match_quarantined_durably(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address)
    raw = known_message()
    code, text = send(p, raw)
    assert code == 250, text
    assert smtp_sink.messages == []
    [record_path] = p.quarantined()
    record = json.loads(record_path.read_text())
    eml = record_path.with_suffix(".eml")
    assert eml.read_bytes() == raw
    assert record["id"] in text.decode()
    assert record["verdict"] == "match" and record["action"] == "quarantine"
    assert record["envelope"]["mail_from"] == "alice@example.org"
    assert record["envelope"]["rcpt_tos"] == ["bob@example.net"]
    assert record["subject"] == "holiday" and record["message_id"]
    [att] = record["attachments"]
    assert att["filename"] == "beach.jpg" and att["size"] == len(KNOWN)
    assert att["content_type"] == "image/jpeg" and len(att["sha256"]) == 64
    assert record["matches"][0]["list"] == "stand-ins"
    assert record["client"]["addr"] == "127.0.0.1"
    for f in (record_path, eml):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    for d in (record_path.parent, p.quarantine_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert not list(p.quarantine_dir.glob("*/.*.tmp"))


def test_match_rejected_by_policy(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address, policy={"on_match": "reject"})
    code, text = send(p, known_message())
    assert (code, text[:5]) == (550, b"5.7.1")
    assert smtp_sink.messages == [] and p.quarantined() == []


def test_match_tagged_by_policy(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address, policy={"on_match": "tag"},
                      smtp={"add_header": False})
    raw = known_message()
    code, _ = send(p, raw)
    assert code == 250
    [got] = smtp_sink.wait_for(1)
    assert got.data == b"X-Mailfilter: match\r\n" + raw


def test_next_hop_down_tempfails(proxy_factory: Factory) -> None:
    p = proxy_factory(f"127.0.0.1:{free_port()}")
    with smtplib.SMTP(p.host, p.port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("alice@example.org")
    assert (code, text[:5]) == (451, b"4.4.1")


def test_next_hop_4xx_then_retry_delivers_once(proxy_factory: Factory,
                                               smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address)
    smtp_sink.data_reply = "451 4.3.0 try again"
    raw = photo_message(3)
    code, text = send(p, raw)
    assert code == 451, text
    assert smtp_sink.messages == []
    smtp_sink.data_reply = "250 2.0.0 Ok"
    code, _ = send(p, raw)  # the client's retry
    assert code == 250
    assert len(smtp_sink.wait_for(1)) == 1


def test_next_hop_5xx_mirrored(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address)
    smtp_sink.data_reply = "554 5.6.0 content refused"
    code, text = send(p, photo_message(4))
    assert (code, text[:5]) == (554, b"5.6.0")


def test_quarantine_unwritable_tempfails(proxy_factory: Factory, smtp_sink: Any,
                                         tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the quarantine's parent should be")
    p = proxy_factory(smtp_sink.address, quarantine={"path": str(blocker / "q")})
    code, text = send(p, known_message())
    assert (code, text[:3]) == (451, b"4.3")
    assert smtp_sink.messages == []


def test_scan_deadline_tempfails_or_fails_open(proxy_factory: Factory,
                                               smtp_sink: Any) -> None:
    many = message_bytes(message(attachments=[
        (f"p{i}.jpg", "image/jpeg", jpeg(100 + i, 1600, 1200)) for i in range(12)]))
    p = proxy_factory(smtp_sink.address, scan={"timeout": 0.05})
    code, text = send(p, many)
    assert (code, text[:5]) == (451, b"4.3.0")
    assert smtp_sink.messages == []
    # (the deadline's deprecated old place, [smtp] scan_timeout, is still read)
    p2 = proxy_factory(smtp_sink.address, smtp={"scan_timeout": 0.05},
                       policy={"on_error": "accept"})
    code, _ = send(p2, many)
    assert code == 250
    [got] = smtp_sink.wait_for(1)
    assert got.data == b"X-Mailfilter: unscanned\r\n" + many


def test_lists_not_loaded_tempfails(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address)
    p.index.fail = True
    code, text = send(p, photo_message(5))
    assert (code, text[:5]) == (451, b"4.3.0")
    assert smtp_sink.messages == []


def test_oversize_refused(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address, smtp={"max_message_size": 20_000})
    big = message_bytes(message(body="x" * 70 + "\n" * 1 + ("y" * 70 + "\n") * 400))
    c = RawClient(p.host, p.port)
    c.cmd("EHLO client.test")
    assert c.cmd(f"MAIL FROM:<a@example.org> SIZE={len(big)}").startswith("552 5.3.4")
    assert c.cmd("MAIL FROM:<a@example.org>").startswith("250")  # no SIZE given
    c.cmd("RCPT TO:<b@example.net>")
    assert c.cmd("DATA").startswith("354")
    c.send(big + b".\r\n")
    assert c.read_reply().startswith("552 5.3.4")
    assert c.cmd("NOOP").startswith("250")  # the session goes on
    assert smtp_sink.messages == []


def test_disallowed_client_refused_at_connect(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address, smtp={"allowed_clients": ["192.0.2.0/24"]})
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP(p.host, p.port, timeout=10)
    assert info.value.smtp_code == 554


def test_smtp_smuggling_not_split(proxy_factory: Factory,
                                  recording_sink: RecordingSink) -> None:
    """A bare LF before the dot must not end the message at a next hop that takes bare LF
    as a line end: the next hop sees one message, the smuggled commands as its content."""
    p = proxy_factory(recording_sink.address, smtp={"add_header": False})
    smuggled = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.net>\r\n"
                b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n")
    for variant in (b"\n.\r\n", b"\n.\n", b"\r\n.\n", b"\r.\r\n"):
        raw = b"Subject: hello\r\n\r\nbody" + variant + smuggled
        c = RawClient(p.host, p.port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@example.org>")
        c.cmd("RCPT TO:<b@example.net>")
        assert c.cmd("DATA").startswith("354")
        c.send(raw + b".\r\n")
        assert c.read_reply().startswith("250")
        c.cmd("QUIT")
        c.close()
    got = recording_sink.wait_for(4)
    assert len(got) == 4
    assert all(m.mail == "MAIL FROM:<a@example.org>" for m in got)
    assert not any("evil" in cmd for cmd in recording_sink.commands)
    assert all(b"MAIL FROM:<evil@attacker.example>" in m.data for m in got)


def test_bare_line_ends_normalised(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address, smtp={"add_header": False})
    c = RawClient(p.host, p.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@example.org>")
    c.cmd("RCPT TO:<b@example.net>")
    c.cmd("DATA")
    c.send(b"Subject: lf\r\n\r\none\ntwo\rthree\r\n.\r\n")
    assert c.read_reply().startswith("250")
    [got] = smtp_sink.wait_for(1)
    assert got.data == b"Subject: lf\r\n\r\none\r\ntwo\r\nthree\r\n"


def test_next_hop_connections_reused(proxy_factory: Factory,
                                     recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address)
    for i in range(8):
        code, _ = send(p, message_bytes(message(subject=f"m{i}")))
        assert code == 250
    assert len(recording_sink.wait_for(8)) == 8
    assert recording_sink.connections == 1
    assert recording_sink.commands.count("RSET") == 0  # clean connections: no RSET
    assert p.relay.stats.reused >= 7


def test_same_photo_decoded_once(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address)
    raw = photo_message(7)
    for _ in range(3):
        assert send(p, raw)[0] == 250
    text = p.metrics.render().decode()
    assert 'mailfilter_attachments_scanned_total{cached="false"} 1.0' in text
    assert 'mailfilter_attachments_scanned_total{cached="true"} 2.0' in text


def test_pipelined_client(proxy_factory: Factory, smtp_sink: Any) -> None:
    p = proxy_factory(smtp_sink.address)
    c = RawClient(p.host, p.port)
    c.cmd("EHLO client.test")
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
           b"RCPT TO:<c@example.net>\r\nDATA\r\n")
    replies = [c.read_reply() for _ in range(4)]
    assert [r[:3] for r in replies] == ["250", "250", "250", "354"]
    c.send(message_bytes(message()) + b".\r\nQUIT\r\n")
    assert c.read_reply().startswith("250")
    assert c.read_reply().startswith("221")
    assert len(smtp_sink.wait_for(1)) == 1
