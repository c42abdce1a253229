"""The next-hop SMTP client: pipelining, reply parsing, and what it does with peers that
break the protocol. The peers are real TCP servers speaking (or abusing) SMTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mailfilter.actions.smtp_client import SmtpClient, SmtpClientError

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
