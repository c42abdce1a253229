"""The milter front end: Postfix (`smtpd_milters`) or Sendmail (`INPUT_MAIL_FILTER`) keeps
the message and its queue, and asks us at the end of each message what to do with it.

The wire format is in `milter_protocol.py`; this module is the asyncio server around it:
one protocol instance per MTA connection, feeding what arrives to its packet framer,
collecting the envelope, headers and body of each message, and at end of message running
the shared flow of `handling.py` (scan under the deadline, policy, quarantine, the one log
line), then telling the MTA:

| decision                     | milter replies                                              |
|------------------------------|-------------------------------------------------------------|
| clean (relay)                | ADDHEADER `X-Mailfilter: clean` (if `add_header`), ACCEPT   |
| tag                          | ADDHEADER `X-Mailfilter: <tag>`, ACCEPT                     |
| reject                       | REPLYCODE `550 5.7.1 ...`                                   |
| tempfail / scan failure      | REPLYCODE `451 4.3.0 ...` (relayed with `on_error=accept`)  |
| quarantine                   | our record fsynced first, then QUARANTINE (Postfix: hold    |
|                              | queue) and ACCEPT; record not written: 451; no hold: DISCARD |
| over `max_message_size`      | REPLYCODE `552 5.3.4 ...`                                   |
| an unexpected error of ours  | `milter.default_action` (tempfail / accept / reject)        |

Negotiation asks only for what we use: connect, HELO, MAIL, RCPT, headers and body; no
EOH, DATA or unknown commands; and no reply to anything but the end of message when the
MTA supports the no-reply bits (Postfix does), so a message costs one round trip. Macros
`{client_addr}`, `{client_name}`, `i` (queue id) and `{auth_authen}` are requested with
SMFIR_SETSYMLIST (Postfix then sends them in place of its lists for those stages), so no
`milter_*_macros` setting is needed.

Limits are the proxy's (`[smtp]`): `max_connections` (one more connection is closed at
once: the MTA applies its `milter_default_action`), `max_concurrent_messages` (one limit for
the proxy and the milter together: messages wait for a slot), `command_timeout` (idle time
between packets), `max_message_size`, `allowed_clients` (for inet listeners; a unix socket
is guarded by its permissions, 0660); the scan's deadline is `[scan] timeout`. A malformed
packet closes that connection with a log line; the MTA applies `milter_default_action` to
its message and other connections go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mailfilter.actions.quarantine import new_id
from mailfilter.frontend import milter_protocol as mp
from mailfilter.frontend.clients import AllowedClients
from mailfilter.handling import Decision, MessageHandler, MessageOutcome
from mailfilter.model import Envelope, Reply, ScanResult
from mailfilter.policy import Action, ActionKind, header_value
from mailfilter.settings import Settings, parse_milter_listen

__all__ = ["MilterServer", "MilterSession"]

log = logging.getLogger("mailfilter.milter")

# What we ask the MTA for (it grants the part it supports, see mp.negotiate).
WANTED_ACTIONS: Final = mp.SMFIF_ADDHDRS | mp.SMFIF_QUARANTINE | mp.SMFIF_SETSYMLIST
WANTED_PROTOCOL: Final = (
    mp.SMFIP_NOEOH | mp.SMFIP_NODATA | mp.SMFIP_NOUNKNOWN      # steps we do not need
    | mp.SMFIP_NR_CONN | mp.SMFIP_NR_HELO | mp.SMFIP_NR_MAIL   # ... and those we need
    | mp.SMFIP_NR_RCPT | mp.SMFIP_NR_HDR | mp.SMFIP_NR_BODY    # without answering them
    | mp.SMFIP_NR_EOH | mp.SMFIP_NR_DATA | mp.SMFIP_NR_UNKN    # (if sent anyway)
    | mp.SMFIP_SKIP                                            # SKIP a too large body
    | mp.SMFIP_HDR_LEADSPC                                     # headers exactly as written
)
# What we record, per stage; at most 5 names a stage (Sendmail's limit). Postfix replaces
# its own list for these stages (milter_connect_macros, ...) with ours.
WANTED_SYMBOLS: Final = (
    (mp.SMFIM_CONNECT, "{client_addr} {client_name} {client_port} {daemon_name} j"),
    (mp.SMFIM_ENVFROM, "i {auth_type} {auth_authen} {auth_author} {mail_addr}"),
    (mp.SMFIM_EOM, "i"),
)

TOO_BIG: Final = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
INTERNAL_ERROR: Final = Reply(451, "4.3.0", "Internal error in the mail filter, try again later")
REFUSED_ON_ERROR: Final = Reply(550, "5.7.1", "Message refused after a mail filter error")
ACCEPTED: Final = Reply(250, "2.0.0", "Ok: accepted")
QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)  # Linux
# Stages of message-level macros (cleared for each new message); the rest are per connection.
MESSAGE_STAGES: Final = frozenset("MRTLNBE")
# Where a macro's latest value is looked up first: end of message back to connect.
STAGE_ORDER: Final = "EBNLTRMHC"


@dataclass
class _Message:
    """One message between MAIL and end of message (or abort)."""

    address: str
    params: tuple[str, ...]
    rcpts: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    headers: bytearray = field(default_factory=bytearray)
    body: bytearray = field(default_factory=bytearray)
    size: int = 0  # bytes of the rebuilt message so far (counted on after too_big)
    in_body: bool = False
    too_big: bool = False


class MilterSession(asyncio.Protocol):
    """One MTA connection: negotiation, then SMTP sessions (QUIT_NC starts another on the
    same socket), each with any number of messages.

    A protocol, not a stream reader: everything the MTA sends is parsed as it arrives,
    whole buffers at a time (an MTA with the no-reply bits sends a message's ~30 packets in
    a few writes), and only the end of a message waits for anything (the scan). Reading
    stops while it does; packets sent after it are handled once it is answered."""

    def __init__(self, server: MilterServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "unix"
        self.framer = mp.PacketFramer(server.max_packet)
        self.agreed: mp.Negotiated | None = None
        self.macros: dict[str, dict[str, str]] = {}
        self.connect: mp.Connect | None = None
        self.helo: str | None = None
        self.message: _Message | None = None
        self.processing = False  # an end of message is being handled; reading waits
        self.closed = False
        self.quickack: Any = None  # the TCP socket, where TCP_QUICKACK exists (_ack_now)
        self._last = 0.0  # loop time of the last data from the MTA, or of our last answer
        self._idle: asyncio.TimerHandle | None = None
        self._paused = False

    @property
    def busy(self) -> bool:
        """A message is at stake (between MAIL and our answer to its end)."""
        return self.message is not None or self.processing

    # --- connection life cycle -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        raw_peer = transport.get_extra_info("peername")
        if isinstance(raw_peer, tuple) and raw_peer:
            self.peer = f"{raw_peer[0]}:{raw_peer[1]}"
        refusal = self.server.refusal(raw_peer)
        if refusal is not None:
            # The MTA treats a closed milter as unavailable: its milter_default_action.
            log.warning("milter connection refused", extra={"fields": {
                "peer": self.peer, "reason": refusal}})
            self.closed = True
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # our few answers go out at once
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if QUICKACK is not None:
                self.quickack = sock
        self.server.sessions.add(self)
        self._last = self.loop.time()
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed and (exc is not None or self.message is not None):
            log.info("milter connection lost", extra={"fields": {
                "peer": self.peer, "error": str(exc) if exc else "closed by the MTA",
                "in_message": self.message is not None}})
        self.closed = True
        self.message = None
        self.framer = mp.PacketFramer(self.server.max_packet)  # (what it held is dropped)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.server.sessions.discard(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _ack_now(self) -> None:
        """Acknowledge what we read at once. With the no-reply bits we send nothing back
        for most packets, so the kernel delays its ACK (up to 40 ms on Linux); the MTA
        (Postfix leaves Nagle's algorithm on) then holds its next small packet until that
        ACK comes: a stall of ~40 ms a message. TCP_QUICKACK sends the pending ACK now."""
        with contextlib.suppress(OSError):
            self.quickack.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)

    def _arm_idle(self) -> None:
        timeout = self.server.settings.smtp.command_timeout
        if timeout and not self.closed:
            self._idle = self.loop.call_at(self._last + timeout, self._idle_check)

    def _idle_check(self) -> None:
        """One timer a connection, moved on only when it fires (not at every packet)."""
        self._idle = None
        if self.closed:
            return
        timeout = self.server.settings.smtp.command_timeout
        if self.processing:  # the MTA waits for us, not we for it
            self._last = self.loop.time()
        elif timeout and self.loop.time() - self._last >= timeout:
            log.warning("milter connection idle too long, closing it", extra={"fields": {
                "peer": self.peer, "timeout": timeout,
                "in_message": self.message is not None}})
            self.server.count_error("milter-timeout")
            self.close()
            return
        self._arm_idle()

    # --- reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._last = self.loop.time()
        self.framer.receive_data(data)
        if self.quickack is not None:
            self._ack_now()
        if not self.processing:
            self._consume()
        else:
            self._pause_if_full()

    def _pause_if_full(self) -> None:
        """While an end of message is handled, keep at most about a packet's worth of what
        the MTA pipelined after it; read the rest once we answered."""
        if self.framer.buffered > self.server.max_packet and not self._paused \
                and self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self._paused = True

    def _consume(self) -> None:
        """Handle every whole packet in the buffer, up to an end of message."""
        out = bytearray()
        framer = self.framer
        try:
            while not self.processing:
                command = framer.next_event()
                if isinstance(command, mp.Marker):  # (never CLOSED: connection_lost says so)
                    break
                answer = self._handle(command)
                if answer is None:  # QUIT
                    self._send(out)
                    self.close()
                    return
                out += answer
        except mp.ProtocolError as exc:
            log.warning("milter protocol error, closing the connection", extra={"fields": {
                "peer": self.peer, "error": str(exc), "in_message": self.message is not None}})
            self.server.count_error("milter-protocol")
            self.close()
            return
        except Exception:  # a bug of ours: this connection ends, the others go on
            log.exception("unexpected error on a milter connection, closing it",
                          extra={"fields": {"peer": self.peer}})
            self.server.count_error("internal")
            self.close()
            return
        self._send(out)
        if self.processing:
            self._pause_if_full()
        elif self.server.draining and not self.message:
            self.close()

    def _send(self, out: bytes | bytearray) -> None:
        if out and self.transport is not None and not self.closed:
            self.transport.write(bytes(out))

    def _start_end_of_message(self, msg: _Message) -> None:
        self.processing = True
        task = self.loop.create_task(self._answer_end_of_message(msg))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _answer_end_of_message(self, msg: _Message) -> None:
        try:
            out = await self._end_of_message(msg)
        finally:
            self.processing = False
            for stage in MESSAGE_STAGES:
                self.macros.pop(stage, None)
        if self.closed:
            return
        self._send(out)
        self._last = self.loop.time()
        if self.server.draining:
            self.close()
            return
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        self._consume()  # what the MTA pipelined after the end of message

    # --- commands --------------------------------------------------------------------------

    def _answer(self, code: int) -> bytes:
        """CONTINUE when the MTA waits for an answer to this command, else nothing."""
        assert self.agreed is not None
        return mp.CONTINUE if self.agreed.replies_to(code) else b""

    def _in_message(self, what: str) -> _Message:
        if self.message is None:
            raise mp.ProtocolError(f"{what} outside a message (no MAIL before it)")
        return self.message

    def _reset_connection(self, keep: str = "") -> None:
        """Forget the previous SMTP connection (macros of stage `keep` just arrived for the
        new one: the MTA sends a command's macros before the command)."""
        for stage in list(self.macros):
            if stage != keep:
                del self.macros[stage]
        self.connect = None
        self.helo = None
        self.message = None

    def _handle(self, command: mp.MilterCommand) -> bytes | None:
        """The bytes to send back (maybe none); None: close the connection. An end of
        message starts its handling and stops reading until it is answered."""
        if isinstance(command, mp.OptionNegotiation):
            if self.agreed is not None:
                raise mp.ProtocolError("option negotiation repeated")
            self.agreed = mp.negotiate(command, WANTED_ACTIONS, WANTED_PROTOCOL,
                                       WANTED_SYMBOLS)
            return mp.optneg_reply(self.agreed)
        if self.agreed is None:
            raise mp.ProtocolError(f"{type(command).__name__} before option negotiation")
        match command:
            case mp.Macros(stage=stage, values=values):
                self.macros[stage] = values
                return b""
            case mp.Body(chunk=chunk):
                self._add_body(self._in_message("body"), chunk)
                msg = self.message
                if self.agreed.replies_to(mp.SMFIC_BODY):
                    # Past the size limit nothing more is kept: tell the MTA to skip the
                    # rest of the body when it can (end of message still comes).
                    if msg is not None and msg.too_big and self.agreed.has(mp.SMFIP_SKIP):
                        return mp.SKIP
                    return mp.CONTINUE
                return b""
            case mp.Header():
                msg = self._in_message("header")
                if msg.in_body:
                    raise mp.ProtocolError("header after the body started")
                leadspc = self.agreed.has(mp.SMFIP_HDR_LEADSPC)
                self._add(msg, msg.headers, mp.header_bytes(command, leadspc))
                return self._answer(mp.SMFIC_HEADER)
            case mp.Rcpt(address=address, params=params):
                self._in_message("rcpt").rcpts.append((address, params))
                return self._answer(mp.SMFIC_RCPT)
            case mp.Mail(address=address, params=params):
                # A new MAIL ends any message the MTA did not finish (as an abort would).
                for stage in MESSAGE_STAGES - {"M"}:
                    self.macros.pop(stage, None)
                self.message = _Message(address, params)
                return self._answer(mp.SMFIC_MAIL)
            case mp.EndOfMessage(chunk=chunk):
                msg = self._in_message("end of message")
                if chunk:
                    self._add_body(msg, chunk)
                self.message = None
                self._start_end_of_message(msg)
                return b""
            case mp.Abort():
                self.message = None
                for stage in MESSAGE_STAGES:
                    self.macros.pop(stage, None)
                return b""
            case mp.Connect():
                self._reset_connection(keep="C")
                self.connect = command
                return self._answer(mp.SMFIC_CONNECT)
            case mp.Helo(name=name):
                self.helo = name
                return self._answer(mp.SMFIC_HELO)
            case mp.EndOfHeaders():
                return self._answer(mp.SMFIC_EOH)
            case mp.Data():
                return self._answer(mp.SMFIC_DATA)
            case mp.Unknown():
                return self._answer(mp.SMFIC_UNKNOWN)
            case mp.QuitNewConnection():
                self._reset_connection()
                return b""
            case mp.Quit():
                return None
        raise mp.ProtocolError(f"unexpected {type(command).__name__}")  # pragma: no cover

    def _add(self, msg: _Message, buf: bytearray, data: bytes) -> None:
        msg.size += len(data)
        if msg.too_big:
            return
        limit = self.server.settings.smtp.max_message_size
        if limit and msg.size + 2 > limit:  # (+2: the blank line after the headers)
            msg.too_big = True
            msg.headers = bytearray()  # nothing more is kept, nor what we had
            msg.body = bytearray()
            return
        buf += data

    def _add_body(self, msg: _Message, chunk: bytes) -> None:
        msg.in_body = True
        self._add(msg, msg.body, chunk)

    # --- end of message --------------------------------------------------------------------

    def macro(self, name: str) -> str | None:
        """The latest value of a macro (`i`, `{client_addr}`), whatever stage brought it."""
        for stage in STAGE_ORDER:
            values = self.macros.get(stage)
            if values and values.get(name):
                return values[name]
        return None

    def all_macros(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for stage in reversed(STAGE_ORDER):  # later stages win
            out.update(self.macros.get(stage, {}))
        return out

    def envelope_of(self, msg: _Message) -> Envelope:
        connect = self.connect
        return Envelope(
            mail_from=msg.address,
            rcpt_tos=tuple(a for a, _p in msg.rcpts),
            mail_options=msg.params,
            rcpt_options=tuple(p for _a, p in msg.rcpts),
            client_addr=self.macro("{client_addr}") or (connect.address if connect else None),
            client_name=self.macro("{client_name}") or (connect.hostname if connect else None),
            helo=self.helo,
            queue_id=self.macro("i"),
        )

    async def _end_of_message(self, msg: _Message) -> bytes:
        """Scan, decide, act; the replies to the end of message. Never raises for a failure
        of ours: that is `milter.default_action`."""
        started = time.perf_counter()
        received = time.time()
        msg_id = new_id(received)
        envelope = self.envelope_of(msg)
        server = self.server
        handler = server.handler
        size = msg.size + 2
        if msg.too_big:
            action = Action(ActionKind.REJECT, "too-big", reply=TOO_BIG)
            out, outcome = self._refuse(TOO_BIG), MessageOutcome(msg_id, action, TOO_BIG,
                                                                   None, {})
        else:
            raw = bytes(msg.headers) + b"\r\n" + bytes(msg.body)
            del msg.headers[:], msg.body[:]  # (one copy of a large message is enough)
            try:
                async with handler.slots:
                    out, outcome = await self._process(handler, msg_id, received, envelope,
                                                       raw)
            except Exception:
                log.exception("unexpected error while handling a message",
                              extra={"fields": {"id": msg_id}})
                server.count_error("internal")
                out, outcome = self._on_error(msg_id)
        outcome.stages["total"] = time.perf_counter() - started
        try:
            handler.finish(outcome, envelope, size, server.name)
        except Exception:  # (the answer matters more than its log line)
            log.exception("could not log a message", extra={"fields": {"id": msg_id}})
        return out

    async def _process(self, handler: MessageHandler, msg_id: str, received: float,
                       envelope: Envelope, raw: bytes) -> tuple[bytes, MessageOutcome]:
        decision = await handler.decide(msg_id, received, raw)
        action = decision.action
        if action.relays:
            out = self._accept(msg_id, action, decision.result)
            reply = ACCEPTED
        elif action.kind is ActionKind.QUARANTINE:
            out, reply = await self._quarantine(handler, decision, envelope, raw)
        else:
            reply = action.reply or INTERNAL_ERROR
            out = self._refuse(reply)
        return out, MessageOutcome(msg_id, action, reply, decision.result, decision.stages)

    def _accept(self, msg_id: str, action: Action, result: ScanResult | None) -> bytes:
        value = header_value(action, result, self.server.settings.smtp.add_header)
        out = b""
        if value is not None:
            if self.agreed is not None and self.agreed.may(mp.SMFIF_ADDHDRS):
                out = mp.add_header("X-Mailfilter", value,
                                    self.agreed.has(mp.SMFIP_HDR_LEADSPC))
            elif action.tag is not None:
                log.warning("the MTA does not let the milter add headers: tag not added",
                            extra={"fields": {"id": msg_id, "tag": value}})
        return out + mp.ACCEPT

    async def _quarantine(self, handler: MessageHandler, decision: Decision,
                          envelope: Envelope, raw: bytes) -> tuple[bytes, Reply]:
        assert self.agreed is not None
        extra: dict[str, Any] = {"milter": {"macros": self.all_macros(), "peer": self.peer}}
        reply, entry = await handler.quarantine_message(decision, envelope, raw,
                                                        self.server.name, extra)
        if entry is None:  # not on our disk: the MTA must keep the message and retry
            return self._refuse(reply), reply
        if self.agreed.may(mp.SMFIF_QUARANTINE):
            reason = f"mailfilter {decision.id}: {decision.action.reason}"
            return mp.quarantine(reason) + mp.ACCEPT, reply
        # The MTA cannot hold it: our quarantine has it, so it is accepted and dropped,
        # as the SMTP proxy does.
        return mp.DISCARD, reply

    def _refuse(self, reply: Reply) -> bytes:
        return mp.reply_code(reply.code, reply.enhanced, reply.text)

    def _on_error(self, msg_id: str) -> tuple[bytes, MessageOutcome]:
        """`milter.default_action` for a failure of ours."""
        choice = self.server.settings.milter.default_action
        if choice == "accept":
            action = Action(ActionKind.RELAY, "internal", scanned=False)
            out = self._accept(msg_id, action, None)
            return out, MessageOutcome(msg_id, action, ACCEPTED, None, {})
        reply = REFUSED_ON_ERROR if choice == "reject" else INTERNAL_ERROR
        kind = ActionKind.REJECT if choice == "reject" else ActionKind.TEMPFAIL
        return self._refuse(reply), MessageOutcome(msg_id, Action(kind, "internal", reply=reply),
                                                   reply, None, {})


class MilterServer:
    """The listener and its sessions; messages go through the service's one `handler`. A
    `FrontEnd` (base.py); `settings` may be replaced while running (SIGHUP), the listening
    address needs a restart."""

    name: Final = "milter"
    relays: Final = False  # the MTA keeps the message: no next hop

    def __init__(self, settings: Settings, handler: MessageHandler,
                 max_packet: int = mp.MAX_PACKET) -> None:
        self.settings = settings
        self.handler = handler
        self.max_packet = max_packet
        self.sessions: set[MilterSession] = set()
        self.draining = False
        self.clients = AllowedClients(settings.smtp.allowed_clients)
        self._server: asyncio.Server | None = None
        self._socket: tuple[Path, int, int] | None = None  # unix: path, st_dev, st_ino
        self.tasks: set[asyncio.Task[None]] = set()  # ends of message being handled
        self.address: str | None = None  # what we listen on, as inet:host:port / unix:path

    def reconfigure(self, settings: Settings) -> None:
        """(the handler, shared with the other front ends, is reconfigured by the
        service)"""
        self.settings = settings
        self.clients = AllowedClients(settings.smtp.allowed_clients)

    def connections(self) -> int:
        return len(self.sessions)

    def count_error(self, reason: str) -> None:
        self.handler.count_error(reason)

    # --- listening -------------------------------------------------------------------------

    async def start(self) -> None:
        where = parse_milter_listen(self.settings.milter.listen)
        path = where.path
        loop = asyncio.get_running_loop()
        if path is None:
            assert where.port is not None
            self._server = await loop.create_server(
                lambda: MilterSession(self), where.host, where.port, reuse_address=True)
            name = self._server.sockets[0].getsockname()
            shown = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
            self.address = f"inet:{shown}:{name[1]}"
        else:
            sock = _bind_unix(path)
            try:
                self._server = await loop.create_unix_server(lambda: MilterSession(self),
                                                             sock=sock)
            except BaseException:
                sock.close()
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            st = path.stat()
            self._socket = (path, st.st_dev, st.st_ino)
            self.address = f"unix:{path}"
        log.info("milter listening", extra={"fields": {"listen": self.address}})

    def refusal(self, peer: Any) -> str | None:
        """Why a new connection is refused, or None."""
        if self.draining:
            return "shutting down"
        # inet; a unix peer is checked by the socket file's mode
        if isinstance(peer, tuple) and peer and not self.clients.allows(str(peer[0])):
            self.count_error("client-not-allowed")
            return "client not allowed"
        if len(self.sessions) >= self.settings.smtp.max_connections:
            self.count_error("too-many-connections")
            return "too many connections"
        return None

    async def drain(self, timeout: float) -> None:
        """Stop accepting; close idle connections at once (between messages the MTA then
        applies its default action to what comes next); wait up to `timeout` for messages
        in flight, then close what is left; remove our unix socket."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if not session.busy:
                    session.close()
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if not session.closed:
                log.warning("closing a milter connection still busy at shutdown",
                            extra={"fields": {"peer": session.peer}})
                session.close()
        if self.tasks:  # (a message whose MTA went away is still recorded or not, cleanly)
            await asyncio.wait(list(self.tasks), timeout=5.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        self._remove_socket()

    def _remove_socket(self) -> None:
        """Remove the socket file if it is still ours (not one a newer instance made)."""
        if self._socket is None:
            return
        path, dev, ino = self._socket
        self._socket = None
        with contextlib.suppress(OSError):
            st = path.lstat()
            if (st.st_dev, st.st_ino) == (dev, ino):
                path.unlink()


def _bind_unix(path: Path) -> socket.socket:
    """A listening unix socket at `path`, mode 0660 (the MTA's group may connect, nobody
    else). A leftover socket file is removed only when nothing answers on it; any other
    file there is an error."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing a stale milter socket", extra={"fields": {"path": str(path)}})
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            raise OSError(f"{path}: another process is listening on this socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Nobody can connect before listen(), so there is no window with the umask's mode.
        path.chmod(0o660)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
