"""Messages that break the rules of message syntax, through `mailfilter serve` over a real
socket: a 1 MB header line, NUL bytes in headers and body, invalid UTF-8 in headers with and
without SMTPUTF8, invalid UTF-8 in the envelope. None is a reason to lose or alter mail:
each is scanned and relayed byte for byte (with only the X-Mailfilter header in front)
within the time bound, and the server's memory stays bounded."""

from __future__ import annotations

import pytest

from hostile.harness import TIME_BOUND, HostileServer


def _relayed_unchanged(server: HostileServer, raw: bytes, seq: str, **kw: str) -> None:
    result, seconds = server.send(raw, **kw)
    assert seconds < TIME_BOUND, f"{seconds:.1f}s"
    assert result.accepted, result
    [got] = server.delivered(seq)
    assert got == b"X-Mailfilter: clean\r\n" + raw


def _message(seq: str, headers: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    return (f"X-Test-Seq: {seq}\r\n".encode() + b"From: a@example.org\r\nTo: b@example.net\r\n"
            + headers + b"\r\n" + body)


def test_one_megabyte_header_line(server: HostileServer) -> None:
    raw = _message("long-header", b"Subject: " + b"A" * (1 << 20) + b"\r\n")
    _relayed_unchanged(server, raw, "long-header")


def test_one_megabyte_body_line(server: HostileServer) -> None:
    raw = _message("long-line", b"Subject: long line\r\n", b"B" * (1 << 20) + b"\r\n")
    _relayed_unchanged(server, raw, "long-line")


def test_nul_bytes_in_headers_and_body(server: HostileServer) -> None:
    raw = _message("nul", b"Subject: nul\x00here\r\nX-Nul: \x00\x00\r\n",
                   b"body \x00 with \x00\x00 nuls\r\n\x00\r\n")
    _relayed_unchanged(server, raw, "nul")


@pytest.mark.parametrize("smtputf8", [False, True])
def test_invalid_utf8_in_headers(server: HostileServer, smtputf8: bool) -> None:
    seq = f"bad-utf8-{smtputf8}"
    raw = _message(seq, b"Subject: caf\xc3 \xff\xfe half \xe2\x82\r\n"
                        b"From: =?utf-8?b?/w==?= <x@example.org>\r\n",
                   b"\xc0\xaf overlong and \xed\xa0\x80 surrogate\r\n")
    if smtputf8:
        _relayed_unchanged(server, raw, seq, mail_from="jörg@bücher.example",
                           mail_params="SMTPUTF8 BODY=8BITMIME")
    else:
        _relayed_unchanged(server, raw, seq)


def test_invalid_utf8_in_the_envelope(server: HostileServer) -> None:
    """Bytes that are not UTF-8 in MAIL FROM: passed on as they are (the next hop decides,
    as it would without us) or refused; never a crash, and the message is not lost."""
    seq = "bad-envelope"
    raw = _message(seq, b"Subject: envelope\r\n")
    result, seconds = server.send(raw, mail_from="\udcff\udcfe@example.org")
    assert seconds < TIME_BOUND
    assert result.code is not None and result.code in (250, 501, 550, 553, 555), result
    assert len(server.delivered(seq)) == (1 if result.accepted else 0)
