"""The next-hop SMTP client: pipelining, reply parsing, and what it does with peers that
break the protocol. The peers are real TCP servers speaking (or abusing) SMTP; the reply
parser is also tested on its own (bytes in any pieces, and fuzzed garbage)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailfilter.actions.smtp_client import SmtpClient, SmtpClientError
from mailfilter.actions.smtp_replies import (
    CLOSED,
    MAX_LINE,
    MAX_REPLY_LINES,
    NEED_DATA,
    MalformedReply,
    ReplyParser,
    SmtpReply,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]
EHLO_REPLY = b"250-peer.test\r\n250-PIPELINING\r\n250-XFORWARD NAME ADDR\r\n250 8BITMIME\r\n"


async def serve(script: Script) -> tuple[asyncio.Server, int, list[bytes]]:
    """A TCP server running `script` per connection; `chunks` records every read."""
    chunks: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer, chunks)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], chunks


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                chunks: list[bytes]) -> None:
    writer.write(b"220 peer.test ESMTP\r\n")
    chunks.append(await reader.readline())
    writer.write(EHLO_REPLY)
    await writer.drain()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_pipelined_commands_go_out_in_one_write_and_replies_pair_up() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     chunks: list[bytes]) -> None:
        await greet(reader, writer, chunks)
        chunk = await reader.read(4096)
        chunks.append(chunk)
        # Both replies in one segment: the client must not lose the second.
        writer.write(b"250 2.0.0 Ok\r\n550-5.1.0 no\r\n550 5.1.0 such sender\r\n")
        await writer.drain()
        await reader.read(100)

    async def main() -> None:
        server, port, chunks = await serve(script)
        async with server:
            client = await SmtpClient.connect("127.0.0.1", port, local_hostname="me.test",
                                              timeout=5, starttls="never")
            assert client.supports("pipelining") and client.extensions["xforward"] == \
                "NAME ADDR"
            replies = await client.pipeline([["XFORWARD", "ADDR=192.0.2.1"],
                                             ["MAIL", "FROM:<a@example.org>"]])
            client.close()
        assert [(r.code, r.message) for r in replies] == [
            (250, "2.0.0 Ok"), (550, "5.1.0 no\n5.1.0 such sender")]
        assert chunks[1] == b"XFORWARD ADDR=192.0.2.1\r\nMAIL FROM:<a@example.org>\r\n"

    run(main())


def test_ehlo_refused_falls_back_to_helo() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     chunks: list[bytes]) -> None:
        writer.write(b"220 old.test\r\n")
        chunks.append(await reader.readline())
        writer.write(b"502 5.5.1 what\r\n")
        chunks.append(await reader.readline())
        writer.write(b"250 old.test\r\n")
        chunks.append(await reader.readline())

    async def main() -> None:
        server, port, chunks = await serve(script)
        async with server:
            client = await SmtpClient.connect("127.0.0.1", port, local_hostname="me.test",
                                              timeout=5, starttls="opportunistic")
            assert client.extensions == {}
            client.close()
        assert chunks[:2] == [b"EHLO me.test\r\n", b"HELO me.test\r\n"]

    run(main())


@pytest.mark.parametrize("reply", [
    b"hello there\r\n",                   # not a reply at all
    b"250-first\r\n451 other code\r\n",   # lines of one reply with different codes
    b"250-" + b"x" * 5000 + b"\r\n",      # a line past the limit
    b"250-x\r\n" * 300,                   # too many lines
])
def test_a_reply_that_breaks_the_protocol_closes_the_connection(reply: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     chunks: list[bytes]) -> None:
        await greet(reader, writer, chunks)
        await reader.readline()
        writer.write(reply)
        await writer.drain()
        await reader.read(100)

    async def main() -> None:
        server, port, _chunks = await serve(script)
        async with server:
            client = await SmtpClient.connect("127.0.0.1", port, local_hostname="me.test",
                                              timeout=5, starttls="never")
            with pytest.raises(SmtpClientError):
                await client.command("NOOP")
            assert not client.is_connected

    run(main())


def test_421_and_a_silent_peer_leave_the_connection_unusable() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     chunks: list[bytes]) -> None:
        await greet(reader, writer, chunks)
        line = await reader.readline()
        if line.startswith(b"NOOP"):
            writer.write(b"421 4.3.2 going down\r\n")
            await writer.drain()
        await reader.read(100)  # and say nothing to RSET

    async def main() -> None:
        server, port, _chunks = await serve(script)
        async with server:
            client = await SmtpClient.connect("127.0.0.1", port, local_hostname="me.test",
                                              timeout=5, starttls="never")
            reply = await client.command("NOOP")
            assert reply.code == 421 and not client.is_connected
            client = await SmtpClient.connect("127.0.0.1", port, local_hostname="me.test",
                                              timeout=0.5, starttls="never")
            with pytest.raises(TimeoutError):
                await client.rset()
            assert not client.is_connected  # a late reply would pair with the next command

    run(main())


def test_starttls_required_but_not_offered_is_refused() -> None:
    async def main() -> None:
        server, port, _chunks = await serve(greet)
        async with server:
            with pytest.raises(SmtpClientError, match="STARTTLS"):
                await SmtpClient.connect("127.0.0.1", port, local_hostname="me.test",
                                         timeout=5, starttls="required")

    run(main())


def test_line_end_inside_a_command_is_refused() -> None:
    async def main() -> None:
        server, port, chunks = await serve(greet)
        async with server:
            client = await SmtpClient.connect("127.0.0.1", port, local_hostname="me.test",
                                              timeout=5, starttls="never")
            with pytest.raises(SmtpClientError):
                await client.command("MAIL", "FROM:<a@b>\r\nRCPT TO:<c@d>")
            client.close()
        assert chunks == [b"EHLO me.test\r\n"]

    run(main())


# --- the reply parser on its own: bytes in, replies out, no socket --------------------------


def _events(parser: ReplyParser, out: list[SmtpReply | str] | None = None
            ) -> list[SmtpReply | str]:
    """Every event the parser has now, up to NEED_DATA (not included) or CLOSED, added to
    `out` (so that those before an error are kept)."""
    out = [] if out is None else out
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            return out
        if event is CLOSED:
            out.append("closed")
            return out
        assert isinstance(event, SmtpReply)
        out.append(event)


def _parse(chunks: list[bytes], eof: bool = True) -> tuple[list[SmtpReply | str], str | None]:
    """The events for a stream fed in these pieces (then its end), and the error class's
    name if it stopped with one. Memory stays bounded all along."""
    parser = ReplyParser()
    out: list[SmtpReply | str] = []
    try:
        for chunk in [*(c for c in chunks if c), *([b""] if eof else [])]:
            parser.receive_data(chunk)
            _events(parser, out)
            assert parser.buffered <= MAX_LINE
    except MalformedReply:
        with pytest.raises(MalformedReply):  # (and it stays broken)
            parser.next_event()
        return out, "MalformedReply"
    return out, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at these offsets, without empty pieces (b"" would say end of stream)."""
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [p for p in pieces if p]


def test_parser_replies_single_multiline_and_pipelined() -> None:
    data = (b"220 peer.test ESMTP\r\n250-peer.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
            b"354 go ahead\n550 5.1.1 \xff unknown\r\n421\r\n")
    assert _parse([data]) == ([
        SmtpReply(220, "peer.test ESMTP"),
        SmtpReply(250, "peer.test\nPIPELINING\n8BITMIME"),
        SmtpReply(354, "go ahead"),
        SmtpReply(550, "5.1.1 \udcff unknown"),
        SmtpReply(421, ""),
        "closed",
    ], None)
    parser = ReplyParser()
    parser.receive_data(b"250-a\r\n250")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b" b\r\n")
    assert parser.next_event() == SmtpReply(250, "a\nb")
    assert parser.next_event() is NEED_DATA


@pytest.mark.parametrize(("data", "error"), [
    (b"hello\r\n", "malformed reply line"),
    (b"25\r\n", "malformed reply line"),
    (b"250x\r\n", "malformed reply line"),
    (b"250-a\r\n550 b\r\n", "different codes"),
    (b"250 " + b"x" * MAX_LINE + b"\r\n", "reply too long"),
    (b"250 " + b"x" * MAX_LINE, "reply line too long"),  # refused before its end arrives
    (b"250-x\r\n" * MAX_REPLY_LINES + b"250 x\r\n", "reply too long"),
    (b"250-x\r\n", "closed inside a reply"),
    (b"25", "closed inside a reply"),
])
def test_parser_refuses_what_is_not_a_reply(data: bytes, error: str) -> None:
    parser = ReplyParser()
    parser.receive_data(data)
    parser.receive_data(b"")
    with pytest.raises(MalformedReply, match=error):
        _events(parser)


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30
                ).map(lambda s: s.strip(" \t"))
_reply = st.builds(SmtpReply, st.integers(200, 599),
                   st.lists(_text, min_size=1, max_size=5).map("\n".join))


def _wire(reply: SmtpReply, crlf: bool) -> bytes:
    lines = reply.message.split("\n")
    end = b"\r\n" if crlf else b"\n"
    return b"".join(f"{reply.code}{'-' if i < len(lines) - 1 else ' '}{line}".encode()
                    + end for i, line in enumerate(lines))


@given(st.lists(st.tuples(_reply, st.booleans()), max_size=8),
       st.lists(st.integers(0, 2000), max_size=12))
@settings(max_examples=200, deadline=None)
def test_fuzz_any_chunking_gives_the_same_replies(
        replies: list[tuple[SmtpReply, bool]], cuts: list[int]) -> None:
    data = b"".join(_wire(r, crlf) for r, crlf in replies)
    expected = [r for r, _crlf in replies]
    assert _parse(_split(data, cuts)) == ([*expected, "closed"], None)
    assert _parse([bytes([b]) for b in data]) == ([*expected, "closed"], None)


_garbage = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"250", b"-", b" ", b"\r\n", b"\n", b"550 ", b"x", b"\r",
                              b"2", b"\xff", b"x" * 1500]), max_size=40).map(b"".join),
)


@given(_garbage, st.lists(st.integers(0, 5000), max_size=12))
@settings(max_examples=300, deadline=None)
def test_fuzz_garbage_is_a_defined_error_whatever_the_chunking(
        data: bytes, cuts: list[int]) -> None:
    """Replies, then the end or MalformedReply (never another exception), the same for
    any split of the stream; never more than MAX_LINE bytes held."""
    whole = _parse([data])
    assert _parse(_split(data, cuts)) == whole
    assert _parse([bytes([b]) for b in data]) == whole
