"""SMTP replies as the next hop sends them, parsed without I/O (h11's model): bytes in
through `receive_data`, whole replies out of `next_event`. `smtp_client.py` feeds it what
it reads from the socket; tests feed it bytes in any pieces.

A reply is one or more lines `DDD-text` ending with a line `DDD text` (RFC 5321 4.2), all
with the same code. Line ends are LF with an optional CR before it. Bounded: a line longer
than `MAX_LINE` bytes (whether or not its end has arrived) or a reply of more than
`MAX_REPLY_LINES` lines is `MalformedReply`, as is anything not shaped like a reply line;
after one, the parser stays broken (the stream is out of step with the commands).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

__all__ = ["CLOSED", "MAX_LINE", "MAX_REPLY_LINES", "NEED_DATA", "MalformedReply",
           "ReplyParser", "SmtpReply"]

MAX_LINE: Final = 4096
MAX_REPLY_LINES: Final = 200


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    message: str  # the reply's lines without their codes, joined by "\n"


class _Marker(Enum):
    NEED_DATA = "need data"  # no whole reply buffered: feed more bytes
    CLOSED = "closed"  # the peer closed the connection between replies


NEED_DATA: Final = _Marker.NEED_DATA
CLOSED: Final = _Marker.CLOSED


class MalformedReply(Exception):
    """Not a reply, too long, or the connection closed inside one."""


class ReplyParser:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes at the start of the buffer known to hold no LF
        self._lines: list[str] = []
        self._code = 0
        self._eof = False
        self._error: MalformedReply | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a reply."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """More bytes from the peer; b"" means it closed the connection."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> SmtpReply | _Marker:
        """The next whole reply, NEED_DATA, or CLOSED (after end of stream between
        replies). Raises MalformedReply, then again on every later call."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except MalformedReply as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def _next(self) -> SmtpReply | _Marker:
        buf = self._buffer
        while True:
            end = buf.find(b"\n", self._scanned)
            if end < 0:
                if len(buf) > MAX_LINE:
                    raise MalformedReply("reply line too long")
                self._scanned = len(buf)
                if self._eof:
                    if buf or self._lines:
                        raise MalformedReply("connection closed inside a reply")
                    return CLOSED
                return NEED_DATA
            line = bytes(buf[:end + 1])
            del buf[:end + 1]
            self._scanned = 0
            if len(line) > MAX_LINE or len(self._lines) >= MAX_REPLY_LINES:
                raise MalformedReply("reply too long")
            head = line[:3]
            if not head.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                raise MalformedReply(f"malformed reply line {line[:40]!r}")
            code = int(head)
            if self._lines and code != self._code:
                raise MalformedReply("reply lines with different codes")
            self._code = code
            self._lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":
                reply = SmtpReply(code, "\n".join(self._lines))
                self._lines, self._code = [], 0
                return reply
