"""The milter codec on its own (no I/O): decoding every command, refusing malformed
packets, framing a byte stream into commands whatever its pieces (fuzzed), negotiation,
reply packets and rebuilding header lines. The expected bytes are written out here from
the protocol description, not produced with the codec."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailfilter.frontend import milter_protocol as mp


def decode(pkt: bytes) -> mp.MilterCommand:
    length = mp.packet_length(pkt[:4])
    assert length == len(pkt) - 4
    return mp.decode(pkt[4], pkt[5:])


def pkt(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def test_decode_every_command() -> None:
    assert decode(pkt(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))) == \
        mp.OptionNegotiation(6, 0x1FF, 0x1FFFFF)
    assert decode(pkt(b"D", b"C{client_addr}\x00192.0.2.1\x00j\x00mx.test\x00")) == \
        mp.Macros("C", {"{client_addr}": "192.0.2.1", "j": "mx.test"})
    assert decode(pkt(b"D", b"N")) == mp.Macros("N", {})  # an empty list is sent too
    assert decode(pkt(b"C", b"mail.example\x004\x9c\x40192.0.2.1\x00")) == \
        mp.Connect("mail.example", "4", 40000, "192.0.2.1")
    assert decode(pkt(b"C", b"[2001:db8::1]\x006\x00\x192001:db8::1\x00")) == \
        mp.Connect("[2001:db8::1]", "6", 25, "2001:db8::1")
    assert decode(pkt(b"C", b"localhost\x00L\x00\x00/run/sock\x00")) == \
        mp.Connect("localhost", "L", 0, "/run/sock")
    assert decode(pkt(b"C", b"unknown\x00U")) == mp.Connect("unknown", "U", None, None)
    assert decode(pkt(b"H", b"client.example\x00")) == mp.Helo("client.example")
    assert decode(pkt(b"M", b"<alice@example.org>\x00SIZE=100\x00BODY=8BITMIME\x00")) == \
        mp.Mail("alice@example.org", ("SIZE=100", "BODY=8BITMIME"))
    assert decode(pkt(b"M", b"<>\x00")) == mp.Mail("", ())  # the null sender
    assert decode(pkt(b"R", b"<bob@example.net>\x00NOTIFY=NEVER\x00")) == \
        mp.Rcpt("bob@example.net", ("NOTIFY=NEVER",))
    assert decode(pkt(b"L", b"Subject\x00 hello\x00")) == mp.Header(b"Subject", b" hello")
    assert decode(pkt(b"L", b"X-8bit\x00 caf\xc3\xa9 \xff\x00")) == \
        mp.Header(b"X-8bit", b" caf\xc3\xa9 \xff")  # bytes kept as they are
    assert decode(pkt(b"N")) == mp.EndOfHeaders()
    assert decode(pkt(b"B", b"line\r\n\x00binary")) == mp.Body(b"line\r\n\x00binary")
    assert decode(pkt(b"E")) == mp.EndOfMessage(b"")
    assert decode(pkt(b"E", b"last chunk\r\n")) == mp.EndOfMessage(b"last chunk\r\n")
    assert decode(pkt(b"A")) == mp.Abort()
    assert decode(pkt(b"Q")) == mp.Quit()
    assert decode(pkt(b"K")) == mp.QuitNewConnection()
    assert decode(pkt(b"T")) == mp.Data()
    assert decode(pkt(b"U", b"XYZZY arg\x00")) == mp.Unknown(b"XYZZY arg")


def test_invalid_utf8_in_envelope_does_not_raise() -> None:
    assert decode(pkt(b"M", b"<\xff@example.org>\x00")) == mp.Mail("\ufffd@example.org", ())


@pytest.mark.parametrize("prefix, error", [
    (struct.pack(">I", 0), "empty packet"),
    (struct.pack(">I", mp.MAX_PACKET + 1), "over the limit"),
    (struct.pack(">I", 0xFFFFFFFF), "over the limit"),
    (b"\x00\x01", "short packet header"),
])
def test_packet_length_refuses_bad_lengths(prefix: bytes, error: str) -> None:
    with pytest.raises(mp.ProtocolError, match=error):
        mp.packet_length(prefix)


def test_packet_length_limit_is_a_parameter() -> None:
    assert mp.packet_length(struct.pack(">I", 100), limit=100) == 100
    with pytest.raises(mp.ProtocolError):
        mp.packet_length(struct.pack(">I", 101), limit=100)


@pytest.mark.parametrize("cmd, data, error", [
    (b"Z", b"", "unknown command 'Z'"),
    (b"\x01", b"", "unknown command '0x01'"),
    (b"O", b"\x00\x00\x00\x06", "12 bytes"),
    (b"L", b"Subject\x00value", "not NUL-terminated"),
    (b"L", b"Subject\x00", "a name and a value"),
    (b"L", b"\x00value\x00", "a name and a value"),
    (b"L", b"a\x00b\x00c\x00", "a name and a value"),
    (b"D", b"", "missing command code"),
    (b"D", b"Cname\x00", "a name without a value"),
    (b"M", b"", "not NUL-terminated"),
    (b"H", b"no terminator", "not NUL-terminated"),
    (b"C", b"host", "missing host name"),
    (b"C", b"host\x00", "missing host name"),
    (b"C", b"host\x00X\x00\x00a\x00", "unknown address family"),
    (b"C", b"host\x004\x00", "missing port"),
    (b"C", b"host\x004\x00\x19addr", "not NUL-terminated"),
])
def test_malformed_commands(cmd: bytes, data: bytes, error: str) -> None:
    with pytest.raises(mp.ProtocolError, match=error):
        mp.decode(cmd[0], data)


def test_negotiation_takes_only_what_was_offered() -> None:
    want_actions = mp.SMFIF_ADDHDRS | mp.SMFIF_QUARANTINE | mp.SMFIF_SETSYMLIST
    want_protocol = mp.SMFIP_NOEOH | mp.SMFIP_NR_HDR | mp.SMFIP_NR_BODY | mp.SMFIP_HDR_LEADSPC
    symbols = ((mp.SMFIM_CONNECT, "{client_addr}"),)
    full = mp.negotiate(mp.OptionNegotiation(6, 0x1FF, 0x1FFFFF), want_actions, want_protocol,
                        symbols)
    assert (full.version, full.actions, full.protocol) == (6, want_actions, want_protocol)
    assert full.symbols == symbols
    v2 = mp.negotiate(mp.OptionNegotiation(2, 0x3F, 0x7F), want_actions, want_protocol, symbols)
    assert (v2.version, v2.actions, v2.protocol) == (2, 0x21, mp.SMFIP_NOEOH)
    assert v2.symbols == ()  # no SETSYMLIST without the MTA's permission
    newer = mp.negotiate(mp.OptionNegotiation(7, 0x1FF, 0x1FFFFF), 0, 0)
    assert newer.version == 6  # we speak 6; the MTA falls back to it
    with pytest.raises(mp.ProtocolError, match="version 1"):
        mp.negotiate(mp.OptionNegotiation(1, 0xF, 0x7F), 0, 0)


def test_which_commands_are_answered() -> None:
    agreed = mp.negotiate(mp.OptionNegotiation(6, 0x1FF, 0x1FFFFF), 0,
                          mp.SMFIP_NR_CONN | mp.SMFIP_NR_HDR | mp.SMFIP_NR_BODY)
    assert not agreed.replies_to(mp.SMFIC_CONNECT)
    assert not agreed.replies_to(mp.SMFIC_HEADER)
    assert not agreed.replies_to(mp.SMFIC_BODY)
    assert agreed.replies_to(mp.SMFIC_HELO) and agreed.replies_to(mp.SMFIC_MAIL)
    assert agreed.replies_to(mp.SMFIC_BODYEOB) and agreed.replies_to(mp.SMFIC_OPTNEG)
    for never in (mp.SMFIC_MACRO, mp.SMFIC_ABORT, mp.SMFIC_QUIT, mp.SMFIC_QUIT_NC):
        assert not agreed.replies_to(never)


def test_reply_packets() -> None:
    assert mp.CONTINUE == b"\x00\x00\x00\x01c"
    assert mp.ACCEPT == b"\x00\x00\x00\x01a"
    assert mp.SKIP == b"\x00\x00\x00\x01s"
    assert mp.DISCARD == b"\x00\x00\x00\x01d"
    assert mp.reply_code(550, "5.7.1", "Message content rejected") == \
        b"\x00\x00\x00\x24y550 5.7.1 Message content rejected\x00"
    # % doubled (Sendmail formats the text), line breaks and runs of blanks flattened
    assert mp.reply_code(451, "4.3.0", "100% full\r\nnow") == \
        pkt(b"y", b"451 4.3.0 100%% full now\x00")
    with pytest.raises(ValueError):
        mp.reply_code(250, "2.0.0", "not a refusal")
    assert mp.add_header("X-Mailfilter", "clean", leading_space=True) == \
        pkt(b"h", b"X-Mailfilter\x00 clean\x00")
    assert mp.add_header("X-Mailfilter", "clean", leading_space=False) == \
        pkt(b"h", b"X-Mailfilter\x00clean\x00")
    assert mp.quarantine("mailfilter ID: match") == pkt(b"q", b"mailfilter ID: match\x00")


def test_optneg_reply_carries_the_macro_lists() -> None:
    agreed = mp.Negotiated(6, 0x121, 0x1F0040,
                           ((0, "{client_addr} {client_name}"), (5, "i")))
    assert mp.optneg_reply(agreed) == pkt(
        b"O", struct.pack(">III", 6, 0x121, 0x1F0040)
        + b"\x00\x00\x00\x00{client_addr} {client_name}\x00" + b"\x00\x00\x00\x05i\x00")


@pytest.mark.parametrize("value, leadspc, line", [
    (b" hello", True, b"Subject: hello\r\n"),          # exact: the MTA kept the space
    (b"hello", True, b"Subject:hello\r\n"),
    (b"hello", False, b"Subject: hello\r\n"),          # the MTA ate one space
    (b" two spaces", False, b"Subject:  two spaces\r\n"),
    (b"\ttab", False, b"Subject:\ttab\r\n"),           # tabs are never eaten
    (b" a\n\tb\n c", True, b"Subject: a\r\n\tb\r\n c\r\n"),  # folded, Postfix's LF
    (b" a\r\n\tb", True, b"Subject: a\r\n\tb\r\n"),
    (b"", False, b"Subject: \r\n"),
])
def test_header_lines(value: bytes, leadspc: bool, line: bytes) -> None:
    assert mp.header_bytes(mp.Header(b"Subject", value), leadspc) == line


# --- framing a stream: bytes in any pieces, commands out ----------------------------------


def _frame(chunks: list[bytes], limit: int = mp.MAX_PACKET
           ) -> tuple[list[mp.MilterCommand | str], str | None]:
    """The commands of a stream fed in these pieces (then its end), and the error's text if
    it stopped with one. Memory stays bounded all along: what is held is at most a packet
    not yet whole (its length already checked against the limit)."""
    framer = mp.PacketFramer(limit)
    out: list[mp.MilterCommand | str] = []
    try:
        for chunk in [*(c for c in chunks if c), b""]:
            framer.receive_data(chunk)
            while True:
                event = framer.next_event()
                if event is mp.NEED_DATA:
                    assert framer.buffered < 4 + limit
                    break
                if event is mp.CLOSED:
                    out.append("closed")
                    break
                assert not isinstance(event, mp.Marker)
                out.append(event)
    except mp.ProtocolError as exc:
        with pytest.raises(mp.ProtocolError):  # (and it stays broken)
            framer.next_event()
        return out, str(exc)
    return out, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def test_framer_commands_across_reads() -> None:
    stream = (pkt(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
              + pkt(b"M", b"<a@example.org>\x00SIZE=10\x00") + pkt(b"B", b"body")
              + pkt(b"E") + pkt(b"Q"))
    expected = [mp.OptionNegotiation(6, 0x1FF, 0x1FFFFF),
                mp.Mail("a@example.org", ("SIZE=10",)), mp.Body(b"body"),
                mp.EndOfMessage(b""), mp.Quit(), "closed"]
    assert _frame([stream]) == (expected, None)
    assert _frame([stream[i:i + 1] for i in range(len(stream))]) == (expected, None)
    framer = mp.PacketFramer()
    framer.receive_data(stream[:10])
    assert framer.next_event() is mp.NEED_DATA
    assert framer.buffered == 10
    framer.receive_data(stream[10:])
    assert framer.next_event() == expected[0]
    assert framer.buffered == len(stream) - 17


@pytest.mark.parametrize("stream, error", [
    (struct.pack(">I", 0), "empty packet"),
    (struct.pack(">I", 101) + b"B", "over the limit of 100"),  # before the data came
    (pkt(b"Z"), "unknown command 'Z'"),
    (pkt(b"M", b"no terminator"), "not NUL-terminated"),
    (pkt(b"B", b"x") + b"\x00\x00", "closed inside a packet"),
])
def test_framer_refuses_bad_streams(stream: bytes, error: str) -> None:
    commands, got = _frame([stream], limit=100)
    assert got is not None and error in got
    assert commands == ([mp.Body(b"x")] if stream.startswith(pkt(b"B", b"x")) else [])


_cstr = st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"") + b"\0")
_name = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\0", b"x") + b"\0")
_packet = st.one_of(  # (each a well-formed command)
    st.builds(lambda d: pkt(b"B", d), st.binary(max_size=300)),
    st.builds(lambda d: pkt(b"E", d), st.binary(max_size=50)),
    st.builds(lambda a, p: pkt(b"M", b"<" + a + p), _cstr, _cstr),
    st.builds(lambda a: pkt(b"R", a), _cstr),
    st.builds(lambda n, v: pkt(b"L", n + v), _name, _cstr),
    st.builds(lambda s, m: pkt(b"D", s + m), st.sampled_from([b"C", b"M", b"E"]),
              st.lists(st.tuples(_cstr, _cstr).map(b"".join), max_size=3).map(b"".join)),
    st.sampled_from([pkt(b"A"), pkt(b"N"), pkt(b"T"), pkt(b"K"), pkt(b"Q"),
                     pkt(b"U", b"XYZZY\x00"), pkt(b"H", b"client.test\x00")]),
)


@given(st.lists(_packet, max_size=12), st.lists(st.integers(0, 4000), max_size=12))
@settings(max_examples=200, deadline=None)
def test_fuzz_any_chunking_gives_the_same_commands(packets: list[bytes],
                                                   cuts: list[int]) -> None:
    stream = b"".join(packets)
    whole = _frame([stream])
    assert whole == ([*(decode(p) for p in packets), "closed"], None)
    assert _frame(_split(stream, cuts)) == whole
    assert _frame([stream[i:i + 1] for i in range(len(stream))]) == whole


_garbage = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(_packet, st.binary(max_size=8),
                       st.sampled_from([struct.pack(">I", 0), struct.pack(">I", 300),
                                        b"\xff\xff\xff\xff"])),
             max_size=10).map(b"".join),
)


@given(_garbage, st.lists(st.integers(0, 4000), max_size=12))
@settings(max_examples=300, deadline=None)
def test_fuzz_garbage_is_a_defined_error_whatever_the_chunking(data: bytes,
                                                               cuts: list[int]) -> None:
    """Commands, then the end or a ProtocolError (never another exception), the same for
    any split of the stream, with at most a packet of the (small) limit held."""
    whole = _frame([data], limit=256)
    assert _frame(_split(data, cuts), limit=256) == whole
    assert _frame([data[i:i + 1] for i in range(len(data))], limit=256) == whole
