"""A small SMTP client for the next hop, on asyncio streams, that can pipeline.

Why not aiosmtplib (which the relay used first): its reply reader takes exactly one reply per
command written, so commands cannot be pipelined (RFC 2920), and every message to the next
hop then pays a round trip for XFORWARD before MAIL FROM. A proxy in front of Postfix sends
XFORWARD with every message, so that round trip was a fixed part of the per-message cost.
Here replies are read from a stream, in order, however many are outstanding.

What it does: connect (with a deadline), read the greeting, EHLO (HELO when EHLO is
refused), STARTTLS (never / when offered / required; certificates verified unless told
otherwise) followed by a new EHLO, single and pipelined commands, DATA with prepared wire
bytes, RSET, QUIT. Replies are parsed by `smtp_replies.ReplyParser` (no I/O there): longer
than `MAX_REPLY_LINES` lines or `MAX_LINE` bytes, or not shaped like replies, they are
protocol errors: the connection is closed and not reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Final, Literal

from mailfilter.actions.smtp_replies import (
    CLOSED,
    NEED_DATA,
    MalformedReply,
    ReplyParser,
    SmtpReply,
)

__all__ = ["SmtpClient", "SmtpClientError", "StartTls"]

READ_SIZE: Final = 64 * 1024
StartTls = Literal["never", "opportunistic", "required"]


class SmtpClientError(Exception):
    """The next hop broke the protocol, refused the session, or the connection is gone."""


def _command_line(parts: Sequence[str]) -> bytes:
    line = " ".join(parts).encode("utf-8", "surrogateescape")
    if b"\r" in line or b"\n" in line:
        # Whatever the client sent was parsed line by line; a line end here would be a
        # second command smuggled to the next hop.
        raise SmtpClientError("line end inside an SMTP command")
    return line + b"\r\n"


class SmtpClient:
    """One connection. Not safe for concurrent use: one transaction at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self._reader = reader
        self._writer = writer
        self._replies = ReplyParser()
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.tls = False
        self._closed = False

    @classmethod
    async def connect(cls, host: str, port: int, *, local_hostname: str, timeout: float,
                      starttls: StartTls = "opportunistic", verify: bool = True
                      ) -> SmtpClient:
        """A connection that has said EHLO (after STARTTLS when that was used).
        SmtpClientError, OSError or TimeoutError when that cannot be had."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE)
        client = cls(reader, writer, timeout)
        try:
            greeting = await client.read_reply()
            if greeting.code != 220:
                raise SmtpClientError(f"greeting {greeting.code} {greeting.message}")
            await client.ehlo(local_hostname)
            if starttls != "never":
                if "starttls" in client.extensions:
                    await client.starttls(host, local_hostname, verify)
                elif starttls == "required":
                    raise SmtpClientError("next hop does not offer STARTTLS")
        except BaseException:
            client.close()
            raise
        return client

    @property
    def is_connected(self) -> bool:
        return not self._closed and not self._writer.is_closing()

    def supports(self, name: str) -> bool:
        return name.lower() in self.extensions

    async def ehlo(self, local_hostname: str) -> None:
        reply = await self.command("EHLO", local_hostname)
        if reply.code == 250:
            self.extensions = {}
            for line in reply.message.split("\n")[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.lower()] = params
            return
        reply = await self.command("HELO", local_hostname)
        if reply.code != 250:
            raise SmtpClientError(f"HELO refused: {reply.code} {reply.message}")
        self.extensions = {}

    async def starttls(self, server_hostname: str, local_hostname: str,
                       verify: bool) -> None:
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise SmtpClientError(f"STARTTLS refused: {reply.code} {reply.message}")
        if self._replies.buffered:
            # Sent in the clear after its 220, it would be taken as said over TLS.
            self.close()
            raise SmtpClientError("next hop sent data after its STARTTLS reply")
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        async with asyncio.timeout(self.timeout):
            await self._writer.start_tls(context, server_hostname=server_hostname)
        self.tls = True
        # What was offered before TLS is forgotten (RFC 3207): ask again.
        await self.ehlo(local_hostname)

    async def read_reply(self) -> SmtpReply:
        """The next reply on the stream."""
        try:
            return await self._read_reply()
        except TimeoutError:
            # A reply may still come: the stream is out of step with our commands now.
            self.close()
            raise

    async def _read_reply(self) -> SmtpReply:
        parser = self._replies
        try:
            event = parser.next_event()  # (pipelined replies often came in one read)
            if event is NEED_DATA:
                async with asyncio.timeout(self.timeout):
                    while event is NEED_DATA:
                        parser.receive_data(await self._reader.read(READ_SIZE))
                        event = parser.next_event()
        except MalformedReply as exc:
            self.close()
            raise SmtpClientError(str(exc)) from exc
        if event is CLOSED:
            self.close()
            raise SmtpClientError("connection closed by the next hop")
        assert isinstance(event, SmtpReply)
        if event.code == 421:
            # The next hop is closing the connection: it cannot be used again.
            self.close()
        return event

    async def command(self, *parts: str) -> SmtpReply:
        self._write(_command_line(parts))
        return await self.read_reply()

    async def pipeline(self, commands: Sequence[Sequence[str]]) -> list[SmtpReply]:
        """Several commands in one write, their replies in order. Only for a next hop that
        offers PIPELINING, and only commands that may be grouped (not DATA's content)."""
        self._write(b"".join(_command_line(parts) for parts in commands))
        replies = []
        for _ in commands:
            replies.append(await self.read_reply())
        return replies

    async def data(self, wire: bytes) -> tuple[SmtpReply, bool]:
        """DATA, then `wire` (already dot-stuffed and ending in CRLF.CRLF): the last reply,
        and whether the content was sent (False: DATA itself was refused)."""
        reply = await self.command("DATA")
        if reply.code != 354:
            return reply, False
        self._write(wire)
        async with asyncio.timeout(self.timeout):
            await self._writer.drain()
        return await self.read_reply(), True

    async def rset(self) -> SmtpReply:
        return await self.command("RSET")

    async def quit(self) -> None:
        with contextlib.suppress(SmtpClientError, OSError, TimeoutError):
            await self.command("QUIT")
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._writer.close()

    def _write(self, data: bytes) -> None:
        if not self.is_connected:
            raise SmtpClientError("connection closed")
        self._writer.write(data)

