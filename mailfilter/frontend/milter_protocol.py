"""The milter wire format (Sendmail's mail filter protocol, versions 2 to 6), without I/O:
bytes in, typed commands out (`PacketFramer`, h11's model: `receive_data`, `next_event`);
decisions in, reply packets out. So every rule can be tested without a socket, and any
chunking of the stream gives the same commands (`milter.py` is the asyncio server around
it, feeding the framer what it reads).

A packet is a 4-byte big-endian length, then that many bytes: one command letter and its
data. Strings in the data are NUL-terminated. The MTA drives the conversation; the filter
answers only the commands that expect an answer (fewer after option negotiation: the
SMFIP_NR_* bits say which ones the filter will never answer, and the MTA then does not wait,
which turns a message's dozen round trips into one).

What is not byte-exact when a message is rebuilt from the MTA's events (`header_bytes`):
- without SMFIP_HDR_LEADSPC the MTA removed one space after each header's colon; we put a
  space back (a header written `Name:value` comes back as `Name: value`, one written with a
  tab after the colon is rebuilt exactly);
- folded header lines are joined with CRLF whatever the MTA used (Postfix sends LF);
- headers the MTA added itself and hides from filters (Postfix's own `Received:`) are absent.
Line ends of the body are the MTA's (Postfix and Sendmail send CRLF).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

__all__ = [
    "CLOSED",
    "MAX_PACKET",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Abort",
    "Body",
    "Connect",
    "Data",
    "EndOfHeaders",
    "EndOfMessage",
    "Header",
    "Helo",
    "Macros",
    "Mail",
    "Marker",
    "MilterCommand",
    "Negotiated",
    "OptionNegotiation",
    "PacketFramer",
    "ProtocolError",
    "Quit",
    "QuitNewConnection",
    "Rcpt",
    "Unknown",
    "decode",
    "header_bytes",
    "negotiate",
    "packet",
    "packet_length",
]

PROTOCOL_VERSION: Final = 6
MIN_VERSION: Final = 2  # the oldest version anyone still speaks (Sendmail 8.11)
BODY_CHUNK: Final = 65535  # what MTAs send per SMFIC_BODY unless SMFIP_MDS_* says more

# Postfix caps a packet at INT_MAX/2, libmilter at 64 KiB of data (more with MDS_*). A body
# chunk is at most 65535 bytes unless we ask for more (we do not); a header can be longer
# (Postfix's header_size_limit is 100 KiB). 1 MiB leaves room and refuses absurd lengths
# before anything is allocated for them.
MAX_PACKET: Final = 1 << 20

# --- commands (MTA -> filter) --------------------------------------------------------------
SMFIC_ABORT: Final = ord("A")
SMFIC_BODY: Final = ord("B")
SMFIC_CONNECT: Final = ord("C")
SMFIC_MACRO: Final = ord("D")
SMFIC_BODYEOB: Final = ord("E")
SMFIC_HELO: Final = ord("H")
SMFIC_QUIT_NC: Final = ord("K")
SMFIC_HEADER: Final = ord("L")
SMFIC_MAIL: Final = ord("M")
SMFIC_EOH: Final = ord("N")
SMFIC_OPTNEG: Final = ord("O")
SMFIC_QUIT: Final = ord("Q")
SMFIC_RCPT: Final = ord("R")
SMFIC_DATA: Final = ord("T")
SMFIC_UNKNOWN: Final = ord("U")

# --- replies (filter -> MTA) -----------------------------------------------------------------
SMFIR_ACCEPT: Final = b"a"
SMFIR_CONTINUE: Final = b"c"
SMFIR_DISCARD: Final = b"d"
SMFIR_ADDHEADER: Final = b"h"
SMFIR_PROGRESS: Final = b"p"
SMFIR_QUARANTINE: Final = b"q"
SMFIR_REJECT: Final = b"r"
SMFIR_SKIP: Final = b"s"
SMFIR_TEMPFAIL: Final = b"t"
SMFIR_REPLYCODE: Final = b"y"
SMFIR_OPTNEG: Final = b"O"

# --- actions the filter may take at end of message (SMFIF_*) ------------------------------
SMFIF_ADDHDRS: Final = 0x01
SMFIF_CHGBODY: Final = 0x02
SMFIF_ADDRCPT: Final = 0x04
SMFIF_DELRCPT: Final = 0x08
SMFIF_CHGHDRS: Final = 0x10
SMFIF_QUARANTINE: Final = 0x20
SMFIF_CHGFROM: Final = 0x40
SMFIF_ADDRCPT_PAR: Final = 0x80
SMFIF_SETSYMLIST: Final = 0x100

# --- protocol steps and extensions (SMFIP_*) ------------------------------------------------
SMFIP_NOCONNECT: Final = 0x01
SMFIP_NOHELO: Final = 0x02
SMFIP_NOMAIL: Final = 0x04
SMFIP_NORCPT: Final = 0x08
SMFIP_NOBODY: Final = 0x10
SMFIP_NOHDRS: Final = 0x20
SMFIP_NOEOH: Final = 0x40
SMFIP_NR_HDR: Final = 0x80  # also known as SMFIP_NOHREPL
SMFIP_NOUNKNOWN: Final = 0x100
SMFIP_NODATA: Final = 0x200
SMFIP_SKIP: Final = 0x400  # the MTA understands SMFIR_SKIP
SMFIP_RCPT_REJ: Final = 0x800
SMFIP_NR_CONN: Final = 0x1000
SMFIP_NR_HELO: Final = 0x2000
SMFIP_NR_MAIL: Final = 0x4000
SMFIP_NR_RCPT: Final = 0x8000
SMFIP_NR_DATA: Final = 0x10000
SMFIP_NR_UNKN: Final = 0x20000
SMFIP_NR_EOH: Final = 0x40000
SMFIP_NR_BODY: Final = 0x80000
SMFIP_HDR_LEADSPC: Final = 0x100000

# --- macro stages for SMFIR_SETSYMLIST (SMFIM_*) ---------------------------------------------
SMFIM_CONNECT: Final = 0
SMFIM_HELO: Final = 1
SMFIM_ENVFROM: Final = 2
SMFIM_ENVRCPT: Final = 3
SMFIM_DATA: Final = 4
SMFIM_EOM: Final = 5
SMFIM_EOH: Final = 6

# Which no-reply bit covers which command (commands without one always get an answer:
# option negotiation and end of message; macros, abort and quit never do).
NO_REPLY_BIT: Final[Mapping[int, int]] = {
    SMFIC_CONNECT: SMFIP_NR_CONN,
    SMFIC_HELO: SMFIP_NR_HELO,
    SMFIC_MAIL: SMFIP_NR_MAIL,
    SMFIC_RCPT: SMFIP_NR_RCPT,
    SMFIC_DATA: SMFIP_NR_DATA,
    SMFIC_UNKNOWN: SMFIP_NR_UNKN,
    SMFIC_HEADER: SMFIP_NR_HDR,
    SMFIC_EOH: SMFIP_NR_EOH,
    SMFIC_BODY: SMFIP_NR_BODY,
}

_LENGTH: Final = struct.Struct(">I")
_OPTNEG: Final = struct.Struct(">III")
_PORT: Final = struct.Struct(">H")
_LINE_END: Final = re.compile(rb"\r?\n")


class ProtocolError(Exception):
    """The peer broke the protocol (bad length, unknown command, malformed data): the
    connection cannot continue. The text says what was wrong, for the log line."""


# --- the commands, decoded ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OptionNegotiation:
    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Macros:
    """Macro values the MTA sends before the command of `stage` (a command letter, e.g.
    "C" for connect). Names as sent: `{client_addr}`, `i`."""

    stage: str
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str
    family: str  # "4", "6", "L" (unix), "U" (unknown)
    port: int | None
    address: str | None


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    """MAIL FROM: the address without angle brackets, and the ESMTP parameters."""

    address: str
    params: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rcpt:
    address: str
    params: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Header:
    """Bytes, not text: header values may be 8-bit and must be rebuilt as received."""

    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class EndOfHeaders:
    pass


@dataclass(frozen=True, slots=True)
class Body:
    chunk: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """Sendmail may send the last body chunk with this command; Postfix never does."""

    chunk: bytes = b""


@dataclass(frozen=True, slots=True)
class Abort:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class QuitNewConnection:
    """SMFIC_QUIT_NC: this SMTP connection is over, the next one follows on this socket
    (with the options already negotiated)."""


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class Unknown:
    """An SMTP command the MTA did not recognise."""

    line: bytes


MilterCommand = (OptionNegotiation | Macros | Connect | Helo | Mail | Rcpt | Header
                 | EndOfHeaders | Body | EndOfMessage | Abort | Quit | QuitNewConnection
                 | Data | Unknown)


# --- decoding -------------------------------------------------------------------------------


def packet_length(prefix: bytes, limit: int = MAX_PACKET) -> int:
    """The length announced by a packet's 4-byte prefix: the command byte and its data.
    Checked before the rest is read, so an absurd length costs nothing."""
    if len(prefix) != 4:
        raise ProtocolError("short packet header")
    (length,) = _LENGTH.unpack(prefix)
    if length < 1:
        raise ProtocolError("empty packet (length 0)")
    if length > limit:
        raise ProtocolError(f"packet of {length} bytes is over the limit of {limit}")
    return int(length)


def _strings(data: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings filling `data` (the last one must be terminated too)."""
    if not data or data[-1] != 0:
        raise ProtocolError(f"{what}: data is not NUL-terminated")
    return data[:-1].split(b"\0")


def _text(raw: bytes) -> str:
    # Addresses and macro values become log fields and JSON: invalid UTF-8 must not raise.
    return raw.decode("utf-8", "replace")


def _address(raw: bytes) -> str:
    text = _text(raw).strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text


def _envelope_args(data: bytes, what: str) -> tuple[str, tuple[str, ...]]:
    args = _strings(data, what)
    return _address(args[0]), tuple(_text(a) for a in args[1:] if a)


def _decode_connect(data: bytes) -> Connect:
    end = data.find(b"\0")
    if end < 0 or end + 1 >= len(data):
        raise ProtocolError("connect: missing host name or address family")
    hostname = _text(data[:end])
    family = chr(data[end + 1])
    rest = data[end + 2:]
    if family == "U":  # unknown: nothing follows
        return Connect(hostname, family, None, None)
    if family not in "46L":
        raise ProtocolError(f"connect: unknown address family {family!r}")
    if len(rest) < 3:
        raise ProtocolError("connect: missing port or address")
    (port,) = _PORT.unpack(rest[:2])
    [address] = _strings(rest[2:], "connect address")[:1]
    return Connect(hostname, family, port, _text(address))


def _decode_macros(data: bytes) -> Macros:
    if not data:
        raise ProtocolError("macro: missing command code")
    stage = chr(data[0])
    values: dict[str, str] = {}
    if len(data) > 1:
        items = _strings(data[1:], "macro")
        if len(items) % 2:
            raise ProtocolError("macro: a name without a value")
        for i in range(0, len(items), 2):
            values[_text(items[i])] = _text(items[i + 1])
    return Macros(stage, values)


def _decode_header(data: bytes) -> Header:
    parts = _strings(data, "header")
    if len(parts) != 2 or not parts[0]:
        raise ProtocolError("header: expected a name and a value")
    return Header(parts[0], parts[1])


def decode(command: int, data: bytes) -> MilterCommand:
    """One packet's command letter and data -> a command; ProtocolError when malformed or
    unknown."""
    if command == SMFIC_BODY:
        return Body(data)
    if command == SMFIC_MACRO:
        return _decode_macros(data)
    if command == SMFIC_HEADER:
        return _decode_header(data)
    if command == SMFIC_RCPT:
        address, params = _envelope_args(data, "rcpt")
        return Rcpt(address, params)
    if command == SMFIC_MAIL:
        address, params = _envelope_args(data, "mail")
        return Mail(address, params)
    if command == SMFIC_BODYEOB:
        return EndOfMessage(data)
    if command == SMFIC_EOH:
        return EndOfHeaders()
    if command == SMFIC_ABORT:
        return Abort()
    if command == SMFIC_CONNECT:
        return _decode_connect(data)
    if command == SMFIC_HELO:
        return Helo(_text(_strings(data, "helo")[0]))
    if command == SMFIC_OPTNEG:
        if len(data) < _OPTNEG.size:
            raise ProtocolError("option negotiation: expected 12 bytes")
        version, actions, protocol = _OPTNEG.unpack_from(data)
        return OptionNegotiation(version, actions, protocol)
    if command == SMFIC_QUIT:
        return Quit()
    if command == SMFIC_QUIT_NC:
        return QuitNewConnection()
    if command == SMFIC_DATA:
        return Data()
    if command == SMFIC_UNKNOWN:
        return Unknown(data.rstrip(b"\0"))
    shown = chr(command) if 32 < command < 127 else f"0x{command:02x}"
    raise ProtocolError(f"unknown command {shown!r}")


# --- framing ----------------------------------------------------------------------------------


class Marker(Enum):
    NEED_DATA = "need data"  # no whole packet buffered: feed more bytes
    CLOSED = "closed"  # the peer closed the connection between packets


NEED_DATA: Final = Marker.NEED_DATA
CLOSED: Final = Marker.CLOSED


class PacketFramer:
    """Commands from the MTA's byte stream, whatever pieces it arrives in. Bounded: a
    length prefix over `limit` is refused before anything is buffered for it, so at most
    about `limit` bytes plus one read are held. A ProtocolError (bad length, malformed or
    unknown command) leaves the framer broken: it raises the same error again."""

    def __init__(self, limit: int = MAX_PACKET) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._pos = 0  # start of the first packet not yet returned
        self._eof = False
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a command."""
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes) -> None:
        """More bytes from the MTA; b"" means it closed the connection."""
        if not data:
            self._eof = True
            return
        if self._pos:  # (what was returned is dropped here, once per read)
            del self._buffer[:self._pos]
            self._pos = 0
        self._buffer += data

    def next_event(self) -> MilterCommand | Marker:
        """The next command, NEED_DATA, or CLOSED (after end of stream between packets).
        Raises ProtocolError, then again on every later call."""
        if self._error is not None:
            raise self._error
        buf, pos = self._buffer, self._pos
        try:
            if len(buf) - pos >= 4:
                end = pos + 4 + packet_length(bytes(buf[pos:pos + 4]), self.limit)
                if len(buf) >= end:
                    self._pos = end
                    return decode(buf[pos + 4], bytes(buf[pos + 5:end]))
            if self._eof:
                if len(buf) > pos:
                    raise ProtocolError("connection closed inside a packet")
                return CLOSED
        except ProtocolError as exc:
            self._error = exc
            self._buffer, self._pos = bytearray(), 0
            raise
        return NEED_DATA


# --- negotiation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What both sides agreed on: the version, the end-of-message actions the filter may
    take, and the protocol bits (steps skipped, replies not sent, extensions)."""

    version: int
    actions: int
    protocol: int
    symbols: tuple[tuple[int, str], ...] = field(default=())

    def replies_to(self, command: int) -> bool:
        """Whether the MTA waits for an answer to `command`."""
        if command in (SMFIC_MACRO, SMFIC_ABORT, SMFIC_QUIT, SMFIC_QUIT_NC):
            return False
        bit = NO_REPLY_BIT.get(command, 0)
        return not (bit and self.protocol & bit)

    def may(self, action: int) -> bool:
        return bool(self.actions & action)

    def has(self, protocol_bit: int) -> bool:
        return bool(self.protocol & protocol_bit)


def negotiate(offer: OptionNegotiation, actions: int, protocol: int,
              symbols: Sequence[tuple[int, str]] = ()) -> Negotiated:
    """Our answer to the MTA's offer: the highest version both speak, and of the actions and
    protocol bits we want only those the MTA offered (asking for more makes Postfix and
    libmilter drop the connection). Macro lists are requested only when the MTA allows it."""
    if offer.version < MIN_VERSION:
        raise ProtocolError(f"MTA speaks milter protocol version {offer.version}, "
                            f"need {MIN_VERSION} or later")
    version = min(offer.version, PROTOCOL_VERSION)
    agreed_actions = actions & offer.actions
    agreed_protocol = protocol & offer.protocol
    wanted = tuple(symbols) if agreed_actions & SMFIF_SETSYMLIST else ()
    return Negotiated(version, agreed_actions, agreed_protocol, wanted)


# --- encoding -------------------------------------------------------------------------------


def packet(code: bytes, data: bytes = b"") -> bytes:
    """A whole packet: length, code, data."""
    return _LENGTH.pack(len(data) + 1) + code + data


def optneg_reply(agreed: Negotiated) -> bytes:
    data = _OPTNEG.pack(agreed.version, agreed.actions, agreed.protocol)
    for stage, names in agreed.symbols:
        data += _LENGTH.pack(stage) + names.encode() + b"\0"
    return packet(SMFIR_OPTNEG, data)


CONTINUE: Final = packet(SMFIR_CONTINUE)
ACCEPT: Final = packet(SMFIR_ACCEPT)
DISCARD: Final = packet(SMFIR_DISCARD)
SKIP: Final = packet(SMFIR_SKIP)
TEMPFAIL: Final = packet(SMFIR_TEMPFAIL)
REJECT: Final = packet(SMFIR_REJECT)
PROGRESS: Final = packet(SMFIR_PROGRESS)


def reply_code(code: int, enhanced: str, text: str) -> bytes:
    """SMFIR_REPLYCODE with `code enhanced text`. Sendmail treats the text as a format
    string (Postfix undoes the doubling): `%` is doubled. No line breaks: one line."""
    if not (400 <= code < 600):
        raise ValueError(f"a milter reply code must be 4xx or 5xx, not {code}")
    clean = " ".join(text.replace("%", "%%").split())
    return packet(SMFIR_REPLYCODE, f"{code} {enhanced} {clean}".encode() + b"\0")


def add_header(name: str, value: str, leading_space: bool) -> bytes:
    """SMFIR_ADDHEADER. With SMFIP_HDR_LEADSPC agreed the MTA writes the value right after
    the colon, so the space is ours to send; otherwise the MTA adds it."""
    text = (" " + value) if leading_space else value
    return packet(SMFIR_ADDHEADER, name.encode() + b"\0" + text.encode() + b"\0")


def quarantine(reason: str) -> bytes:
    """SMFIR_QUARANTINE: Postfix puts the message on its hold queue (it logs the reason,
    cut to 100 characters)."""
    return packet(SMFIR_QUARANTINE, " ".join(reason.split()).encode() + b"\0")


# --- rebuilding the message -------------------------------------------------------------------


def header_bytes(header: Header, leading_space_kept: bool) -> bytes:
    """One header line as it goes into the rebuilt message (CRLF-terminated); see the
    module docstring for what is not byte-exact."""
    value = _LINE_END.sub(b"\r\n", header.value)
    if leading_space_kept or value.startswith(b"\t"):
        return header.name + b":" + value + b"\r\n"
    return header.name + b": " + value + b"\r\n"
