"""A test milter client: the MTA side of the milter protocol, written here from the
protocol description (not with mailfilter's codec, so a misunderstanding in one is caught by
the other), speaking raw bytes over a real socket.

It sends what Postfix sends (packet by packet, or several packets in one write to test
pipelining) and reads the filter's replies."""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Final

from waiting import wait_until

# MTA -> filter
ABORT, BODY, CONNECT, MACRO, BODYEOB = b"A", b"B", b"C", b"D", b"E"
HELO, QUIT_NC, HEADER, MAIL, EOH = b"H", b"K", b"L", b"M", b"N"
OPTNEG, QUIT, RCPT, DATA, UNKNOWN = b"O", b"Q", b"R", b"T", b"U"

# filter -> MTA: final answers, and what may come before a final answer at end of message
FINAL: Final = frozenset(b"acdrtyO")
ACCEPT, CONTINUE, DISCARD, REJECT, TEMPFAIL = b"a", b"c", b"d", b"r", b"t"
REPLYCODE, ADDHEADER, QUARANTINE, SKIP, PROGRESS = b"y", b"h", b"q", b"s", b"p"

# Postfix 3.7 offers (milter_protocol = 6): every action up to SETSYMLIST, every step and
# no-reply bit, SKIP, RCPT_REJ and HDR_LEADSPC.
POSTFIX_ACTIONS: Final = 0x1FF
POSTFIX_PROTOCOL: Final = 0x1FFFFF
# Version 2 (Sendmail 8.11/8.12): the first six actions, the first seven protocol bits.
V2_ACTIONS: Final = 0x3F
V2_PROTOCOL: Final = 0x7F

NO_EOH: Final = 0x40
NR_BODY: Final = 1 << 19
SKIP_BIT: Final = 1 << 10
LEADSPC: Final = 1 << 20
NR_BITS: Final = {b"C": 1 << 12, b"H": 1 << 13, b"M": 1 << 14, b"R": 1 << 15, b"T": 1 << 16,
                  b"U": 1 << 17, b"L": 1 << 7, b"N": 1 << 18, b"B": 1 << 19}
CHUNK: Final = 65535


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def cstr(*parts: str | bytes) -> bytes:
    return b"".join((p.encode() if isinstance(p, str) else p) + b"\0" for p in parts)


@dataclass
class Agreed:
    version: int
    actions: int
    protocol: int
    symbols: dict[int, str] = field(default_factory=dict)

    def answers(self, cmd: bytes) -> bool:
        bit = NR_BITS.get(cmd, 0)
        return not (bit and self.protocol & bit)


def split_message(raw: bytes, leadspc: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A CRLF message as Postfix hands it to a milter: headers as (name, value) with folded
    lines joined by LF and, without HDR_LEADSPC, one space after the colon removed; the
    body after the blank line."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, body = raw.rstrip(b"\r\n"), b""
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\n" + line)
            continue
        name, _, value = line.partition(b":")
        if not leadspc and value.startswith(b" "):
            value = value[1:]
        headers.append((name.rstrip(b" \t"), value))
    return headers, body


class MilterClient:
    def __init__(self, address: tuple[str, int] | str, timeout: float = 30.0) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address, timeout=timeout)
        self.agreed: Agreed | None = None

    # --- raw I/O -------------------------------------------------------------------------

    def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(packet(cmd, data))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            piece = self.sock.recv(n - len(buf))
            if not piece:
                raise ConnectionError(f"closed by the filter after {len(buf)} of {n} bytes")
            buf += piece
        return buf

    def read(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", self._exactly(4))
        body = self._exactly(length)
        return body[:1], body[1:]

    def read_until_final(self) -> list[tuple[bytes, bytes]]:
        """Replies up to and including a final one (accept, continue, reject, ...)."""
        out = []
        while True:
            code, data = self.read()
            out.append((code, data))
            if code[0] in FINAL:
                return out

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the filter closes the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def nothing_pending(self, wait: float = 0.2) -> bool:
        """No reply arrives within `wait` seconds (for commands that must not be answered)."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(30.0)
        return data == b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # --- commands ------------------------------------------------------------------------

    def negotiate(self, version: int = 6, actions: int = POSTFIX_ACTIONS,
                  protocol: int = POSTFIX_PROTOCOL) -> Agreed:
        self.send(OPTNEG, struct.pack(">III", version, actions, protocol))
        code, data = self.read()
        assert code == OPTNEG, (code, data)
        v, a, p = struct.unpack(">III", data[:12])
        symbols: dict[int, str] = {}
        rest = data[12:]
        while rest:
            (stage,) = struct.unpack(">I", rest[:4])
            names, _, rest = rest[4:].partition(b"\0")
            symbols[stage] = names.decode()
        self.agreed = Agreed(v, a, p, symbols)
        return self.agreed

    def expect_answer(self, cmd: bytes) -> None:
        """Read CONTINUE when the filter answers `cmd` under the agreed bits, and check
        that nothing comes when it does not."""
        assert self.agreed is not None
        if self.agreed.answers(cmd):
            assert self.read() == (CONTINUE, b""), cmd

    def macros(self, stage: bytes, values: dict[str, str]) -> bytes:
        return packet(MACRO, stage + b"".join(cstr(k, v) for k, v in values.items()))

    def session_packets(self, client_addr: str = "192.0.2.7", client_name: str = "client.test",
                        helo: str = "client.test") -> list[tuple[bytes, bytes]]:
        """Macro + connect + helo, as Postfix sends them: (command, packet) pairs."""
        return [
            (MACRO, self.macros(b"C", {"{client_addr}": client_addr,
                                       "{client_name}": client_name, "j": "mx.test"})),
            (CONNECT, packet(CONNECT, cstr(client_name) + b"4" + struct.pack(">H", 40000)
                             + cstr(client_addr))),
            (HELO, packet(HELO, cstr(helo))),
        ]

    def message_packets(self, raw: bytes, mail_from: str = "alice@example.org",
                        rcpts: tuple[str, ...] = ("bob@example.net",),
                        queue_id: str = "4ABCDE12345", auth: str | None = None,
                        mail_params: tuple[str, ...] = ()) -> list[tuple[bytes, bytes]]:
        """One message from MAIL to end of message, split the way Postfix does."""
        assert self.agreed is not None
        leadspc = bool(self.agreed.protocol & LEADSPC)
        # (no queue id at MAIL: Postfix opens the queue file at the first valid RCPT)
        mail_macros: dict[str, str] = {}
        if auth is not None:
            mail_macros["{auth_authen}"] = auth
        out = [(MACRO, self.macros(b"M", mail_macros)),
               (MAIL, packet(MAIL, cstr(f"<{mail_from}>", *mail_params)))]
        for r in rcpts:
            out.append((MACRO, self.macros(b"R", {"i": queue_id})))
            out.append((RCPT, packet(RCPT, cstr(f"<{r}>"))))
        headers, body = split_message(raw, leadspc)
        for name, value in headers:
            out.append((HEADER, packet(HEADER, name + b"\0" + value + b"\0")))
        if not self.agreed.protocol & NO_EOH:  # (Postfix leaves out what was declined)
            out.append((EOH, packet(EOH)))
        for i in range(0, len(body), CHUNK):
            out.append((MACRO, self.macros(b"B", {"i": queue_id})))
            out.append((BODY, packet(BODY, body[i:i + CHUNK])))
        out.append((MACRO, self.macros(b"E", {"i": queue_id})))
        out.append((BODYEOB, packet(BODYEOB)))
        return out

    def run(self, pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Send packets one at a time as an MTA waiting for each answer does; returns the
        answers to the end of message (if any was sent)."""
        final: list[tuple[bytes, bytes]] = []
        for cmd, pkt in pairs:
            self.send_raw(pkt)
            if cmd == BODYEOB:
                final = self.read_until_final()
            elif cmd in (MACRO, ABORT, QUIT, QUIT_NC):
                continue
            else:
                self.expect_answer(cmd)
        return final

    def pipelined(self, pairs: list[tuple[bytes, bytes]]) -> bytes:
        """All packets in one write; the caller reads the answers."""
        data = b"".join(p for _c, p in pairs)
        self.send_raw(data)
        return data

    def send_message(self, raw: bytes, **kwargs: object) -> list[tuple[bytes, bytes]]:
        return self.run(self.message_packets(raw, **kwargs))  # type: ignore[arg-type]


wait_for = wait_until
