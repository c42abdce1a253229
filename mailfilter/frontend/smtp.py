"""The SMTP (or LMTP) proxy front end, on aiosmtpd.

Used by Postfix as an after-queue content filter (`content_filter`, mail comes back on the
reinjection smtpd that is our next hop) or as a before-queue proxy (`smtpd_proxy_filter`).

Reply semantics (nothing is ever lost):

- The client's envelope is mirrored to the next hop as it arrives (`actions/relay.py`):
  MAIL FROM opens a next-hop transaction, each RCPT TO gets the next hop's own answer. A
  recipient the next hop refuses is refused with its code at RCPT time; one it accepts is
  accepted. The next hop down at MAIL FROM: 451 4.4.1 (the client keeps the message).
- At the end of DATA the message is scanned, the policy decides, and the one DATA reply
  (SMTP), or one reply per accepted recipient (LMTP), says what happened:
  relayed: the next hop's answer to DATA (250 only after it accepted the message; its 4xx
  or 5xx mirrored; the connection failing: 451 4.4.2); quarantined: 250 only after the
  message and its record are on disk (fsynced), else 451; rejected by policy: 550 5.7.1;
  any failure of ours (scan deadline, worker crash, lists not loaded, an unexpected
  exception): 451 4.3.0, or with `on_error = "accept"` the message is relayed unscanned.
- A 5xx reaches the client only when the next hop said 5xx or the policy says reject.

Also: ESMTP parameters (SIZE, BODY, SMTPUTF8, DSN's RET/ENVID/NOTIFY/ORCPT) passed on as
given; XFORWARD and XCLIENT attributes accepted and sent on as XFORWARD when the next hop
offers it; message bytes relayed as received (see relay.py on line ends), with only an
`X-Mailfilter: <verdict>` header prepended when `add_header` is on; clients outside
`allowed_clients` get 554 at connect; more than `max_connections` get 421.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiosmtpd.smtp import Session

from mailfilter.actions.quarantine import QuarantineStore, new_id
from mailfilter.actions.relay import (
    NextHopTransaction,
    NextHopUnavailable,
    RelayPool,
    local_hostname,
    xtext_decode,
)
from mailfilter.frontend.aiosmtpd_adapter import SessionAdapter
from mailfilter.frontend.clients import AllowedClients
from mailfilter.handling import MessageHandler, MessageOutcome
from mailfilter.model import Envelope, Reply, ScanResult
from mailfilter.policy import Action, ActionKind, decide_error, header_value
from mailfilter.scanner import Scanner
from mailfilter.settings import Settings, split_host_port

__all__ = ["SmtpProxy"]

log = logging.getLogger("mailfilter.smtp")

MAX_RECIPIENTS: Final = 1000
XFORWARD_ATTRS: Final = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
XCLIENT_ATTRS: Final = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR",
                        "DESTPORT")
MAIL_PARAMS: Final = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"})
RCPT_PARAMS: Final = frozenset({"NOTIFY", "ORCPT"})
# aiosmtpd reads with a StreamReader of this limit; DATA is read in pieces of up to this.
READ_LIMIT: Final = 64 * 1024

INTERNAL_ERROR: Final = Reply(451, "4.3.0", "Internal error in the mail filter, try again later")
SHUTTING_DOWN: Final = Reply(421, "4.3.2", "Service shutting down, try again later")
TOO_BIG: Final = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
IDLE_TIMEOUT: Final = Reply(421, "4.4.2", "Timeout waiting for a command, closing connection")

_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PATH: Final = re.compile(r"^\s*(?:<([^<>]*)>|([^<>\s]+))(?:\s+(.*))?$", re.S)
_PARAM: Final = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e\x80-\U0010ffff]+))?$"
)


def _format(reply: Reply) -> str:
    return str(reply)


def parse_path(arg: str, keyword: str) -> tuple[str, list[str]] | None:
    """`FROM:<a@b> SIZE=1 BODY=8BITMIME` -> ('a@b', ['SIZE=1', 'BODY=8BITMIME']); the
    address and parameters exactly as given. None: bad syntax, and any control character
    (a CR or NUL in an address would reach the next hop as a line end or be cut there)."""
    if arg[: len(keyword)].upper() != keyword or _CONTROL.search(arg):
        return None
    m = _PATH.match(arg[len(keyword):])
    if not m:
        return None
    address = m.group(1) if m.group(1) is not None else m.group(2)
    params = (m.group(3) or "").split()
    return address, params


def check_params(params: Sequence[str], allowed: frozenset[str]) -> Reply | None:
    for p in params:
        m = _PARAM.match(p)
        if not m:
            return Reply(501, "5.5.4", f"Bad parameter syntax: {p[:40]}")
        key, value = m.group(1).upper(), m.group(2)
        if key not in allowed:
            return Reply(555, "5.5.4", f"Unsupported parameter {key}")
        if key == "SIZE" and (value is None or not value.isdigit()):
            return Reply(501, "5.5.4", "Bad SIZE value")
        if key == "BODY" and (value or "").upper() not in ("7BIT", "8BITMIME"):
            return Reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
        if key == "SMTPUTF8" and value is not None:
            return Reply(501, "5.5.4", "SMTPUTF8 takes no value")
        if key == "RET" and (value or "").upper() not in ("FULL", "HDRS"):
            return Reply(501, "5.5.4", "RET must be FULL or HDRS")
        if key in ("ENVID", "ORCPT", "NOTIFY") and not value:
            return Reply(501, "5.5.4", f"{key} needs a value")
    return None


def _param_value(params: Iterable[str], key: str) -> str | None:
    for p in params:
        k, _, v = p.partition("=")
        if k.upper() == key:
            return v
    return None


def unstuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2: drop the first dot of every line that starts with one."""
    data = data.replace(b"\r\n.", b"\r\n")
    return data[1:] if data.startswith(b".") else data


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    s = settings.smtp
    if not (s.tls_cert and s.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(s.tls_cert, s.tls_key)
    return context


@dataclass
class ClientTransaction:
    mail_from: str
    mail_params: list[str]
    next_hop: NextHopTransaction
    rcpts: list[tuple[str, list[str]]] = field(default_factory=list)


class _NoHooks:
    """aiosmtpd wants a handler; ours are methods of the session class."""

    async def handle_exception(self, error: Exception) -> str:
        log.error("unexpected error in an SMTP session", exc_info=error)
        return _format(INTERNAL_ERROR)


class ProxySession(SessionAdapter):
    """One client connection. aiosmtpd runs the session (reading commands, calling the
    `smtp_*` methods); what it does not offer publicly comes through `SessionAdapter`."""

    line_length_limit = READ_LIMIT
    command_size_limit = 4096  # MAIL/RCPT with DSN parameters, XFORWARD, XCLIENT
    command_size_limits: Any = None  # set per class below (aiosmtpd's is shared)
    lmtp = False

    def __init__(self, proxy: SmtpProxy) -> None:
        self.proxy = proxy
        self.txn: ClientTransaction | None = None
        self.processing = False
        self.xforward: dict[str, str] = {}
        self.peer_addr: str | None = None
        self.peer_port: int | None = None
        self.greeted_extended = False
        s = proxy.settings.smtp
        super().__init__(
            _NoHooks(),
            data_size_limit=s.max_message_size or None,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=proxy.hostname,
            ident="ESMTP mailfilter" if not self.lmtp else "LMTP mailfilter",
            tls_context=proxy.tls_context,
            timeout=s.command_timeout,
            loop=asyncio.get_running_loop(),
        )

    def sess(self) -> Session:
        # (not a property: aiosmtpd inspects every attribute of the instance at creation)
        assert self.session is not None
        return self.session

    # --- connection life cycle ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and peer:
                self.peer_addr, self.peer_port = str(peer[0]), int(peer[1])

    def connection_lost(self, error: Exception | None) -> None:
        self._abort_txn()
        self.proxy.sessions.discard(self)
        super().connection_lost(error)

    async def refused_before_greeting(self) -> bool:
        refusal = self.proxy.refusal(self.peer_addr)
        if refusal is None:
            # Counted from here, not from connection_made: a burst of connections otherwise
            # counts the ones not yet judged and the refused ones still closing, and refuses
            # below max_connections (seen: 36 of 40 served). No await between the check
            # and the add, so the count is exact.
            self.proxy.sessions.add(self)
            return False
        with contextlib.suppress(Exception):
            await self.push(_format(refusal))
        if self.transport is not None:
            self.transport.close()
        return True

    def on_reset(self) -> None:
        self._abort_txn()

    def _abort_txn(self) -> None:
        txn = getattr(self, "txn", None)
        if txn is not None:
            self.txn = None
            txn.next_hop.abort()

    def close_when_idle(self) -> bool:
        """Draining: close now if no message is at stake. True when closed."""
        if self.txn is not None or self.processing or self.transport is None:
            return False
        with contextlib.suppress(Exception):
            self.write_now(_format(SHUTTING_DOWN))
        self.transport.close()
        return True

    def on_idle_timeout(self) -> None:
        """command_timeout passed without a command (or DATA stalled): say 421 before
        closing (RFC 5321 4.5.3.2; aiosmtpd itself closes silently)."""
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.write_now(_format(IDLE_TIMEOUT))

    async def _after_transaction(self) -> None:
        self.xforward.clear()
        if self.proxy.draining and self.transport is not None:
            await self.push(_format(SHUTTING_DOWN))
            self.transport.close()

    # --- greeting ------------------------------------------------------------------------

    def _extensions(self) -> list[str]:
        s = self.proxy.settings.smtp
        out = ["PIPELINING", f"SIZE {s.max_message_size}", "8BITMIME", "SMTPUTF8",
               "ENHANCEDSTATUSCODES", "DSN",
               "XFORWARD " + " ".join(XFORWARD_ATTRS),
               "XCLIENT " + " ".join(XCLIENT_ATTRS)]
        if self.tls_context is not None and not self.tls_started():
            out.append("STARTTLS")
        return out

    async def smtp_EHLO(self, hostname: str | None) -> None:  # noqa: N802 (aiosmtpd's name)
        if self.lmtp:
            await self.push('500 5.5.1 Error: command "EHLO" not recognized')
            return
        await self._ehlo(hostname)

    async def _ehlo(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self.reset_state()
        self.sess().extended_smtp = True
        self.sess().host_name = hostname
        lines = [self.hostname, *self._extensions()]
        for line in lines[:-1]:
            await self.push(f"250-{line}")
        await self.push(f"250 {lines[-1]}")

    async def smtp_HELO(self, hostname: str | None) -> None:  # noqa: N802
        if self.lmtp:
            await self.push('500 5.5.1 Error: command "HELO" not recognized')
            return
        await super().smtp_HELO(hostname)

    async def smtp_STARTTLS(self, arg: str | None) -> None:  # noqa: N802
        self._abort_txn()
        self.xforward.clear()
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str | None) -> None:  # noqa: N802
        await self.push("502 5.5.1 Error: AUTH not supported")

    async def smtp_VRFY(self, arg: str | None) -> None:  # noqa: N802
        await self.push("252 2.5.2 Cannot VRFY user")

    # --- XFORWARD / XCLIENT ----------------------------------------------------------------

    def _attributes(self, arg: str | None, allowed: Sequence[str]
                    ) -> dict[str, str] | Reply:
        if not arg:
            return Reply(501, "5.5.4", "Syntax: attribute=value ...")
        attrs: dict[str, str] = {}
        for item in arg.split():
            name, eq, value = item.partition("=")
            if not eq or name.upper() not in allowed:
                return Reply(501, "5.5.4", f"Bad attribute: {item[:40]}")
            attrs[name.upper()] = xtext_decode(value)
        return attrs

    async def smtp_XFORWARD(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed("EHLO"):
            return
        if self.txn is not None:
            await self.push("503 5.5.1 Error: XFORWARD not allowed in a transaction")
            return
        attrs = self._attributes(arg, XFORWARD_ATTRS)
        if isinstance(attrs, Reply):
            await self.push(_format(attrs))
            return
        self.xforward.update(attrs)
        await self.push("250 2.0.0 Ok")

    async def smtp_XCLIENT(self, arg: str | None) -> None:  # noqa: N802
        if self.txn is not None:
            await self.push("503 5.5.1 Error: XCLIENT not allowed in a transaction")
            return
        attrs = self._attributes(arg, XCLIENT_ATTRS)
        if isinstance(attrs, Reply):
            await self.push(_format(attrs))
            return
        # As if a new client connected: its attributes are sent on as XFORWARD; a fresh
        # greeting, and the client must say EHLO again.
        self.xforward = {k: v for k, v in attrs.items() if k in XFORWARD_ATTRS}
        self.reset_state()
        self.sess().host_name = None
        await self.push(f"220 {self.hostname} {self.greeting_text()}")

    # --- the transaction ------------------------------------------------------------------

    def _relay_attributes(self) -> dict[str, str]:
        """XFORWARD for the next hop: what the client forwarded, else what we know."""
        if self.xforward:
            return dict(self.xforward)
        attrs = {"NAME": "[UNAVAILABLE]", "PROTO": "ESMTP" if self.sess().extended_smtp
                 else "SMTP", "SOURCE": "REMOTE"}
        if self.peer_addr:
            attrs["ADDR"] = self.peer_addr
        if self.peer_port is not None:
            attrs["PORT"] = str(self.peer_port)
        helo = self.sess().host_name
        if helo:
            attrs["HELO"] = str(helo)
        return attrs

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed("EHLO" if not self.lmtp else "LHLO"):
            return
        if self.txn is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        if self.proxy.draining:
            await self.push(_format(SHUTTING_DOWN))
            if self.transport is not None:
                self.transport.close()
            return
        parsed = parse_path(arg or "", "FROM:")
        if parsed is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        address, params = parsed
        if params and not self.sess().extended_smtp:
            await self.push("501 5.5.4 Parameters need EHLO")
            return
        bad = check_params(params, MAIL_PARAMS)
        if bad is not None:
            await self.push(_format(bad))
            return
        limit = self.proxy.settings.smtp.max_message_size
        size = _param_value(params, "SIZE")
        if limit and size is not None and int(size) > limit:
            await self.push(_format(TOO_BIG))
            return
        next_hop = self.proxy.relay.begin(self._relay_attributes(), address, params)
        try:
            refusal = await next_hop.start()
        except NextHopUnavailable as exc:
            log.warning("next hop unavailable", extra={"fields": {
                "next_hop": self.proxy.settings.smtp.next_hop, "error": exc.detail}})
            self.proxy.count_error("next-hop-unavailable")
            await self.push(_format(exc.reply))
            return
        if refusal is not None:
            await self.push(_format(refusal))
            return
        self.txn = ClientTransaction(address, params, next_hop)
        await self.push("250 2.1.0 Ok")

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed("EHLO" if not self.lmtp else "LHLO"):
            return
        txn = self.txn
        if txn is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        parsed = parse_path(arg or "", "TO:")
        if parsed is None or not parsed[0]:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address> [parameters]")
            return
        address, params = parsed
        bad = check_params(params, RCPT_PARAMS)
        if bad is not None:
            await self.push(_format(bad))
            return
        if len(txn.rcpts) >= MAX_RECIPIENTS:
            await self.push("452 4.5.3 Error: too many recipients")
            return
        try:
            reply = await txn.next_hop.rcpt(address, params)
        except NextHopUnavailable as exc:
            self.proxy.count_error("next-hop-unavailable")
            await self.push(_format(exc.reply))
            return
        if reply.positive:
            txn.rcpts.append((address, params))
        await self.push(_format(reply))

    async def smtp_RSET(self, arg: str | None) -> None:  # noqa: N802
        if arg:
            await self.push("501 5.5.4 Syntax: RSET")
            return
        self.reset_state()
        self.xforward.clear()
        await self.push("250 2.0.0 Ok")

    async def smtp_DATA(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed("EHLO" if not self.lmtp else "LHLO"):
            return
        txn = self.txn
        if txn is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if not txn.rcpts:
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        raw = await self._read_data()
        if raw is None:
            self._abort_txn()
            replies = [TOO_BIG] * (len(txn.rcpts) if self.lmtp else 1)
        else:
            self.processing = True
            self.txn = None
            # The message may take the scan's deadline + the next hop's time; the client
            # waits.
            s = self.proxy.settings.smtp
            self.restart_idle_timer(self.proxy.settings.scan.timeout + 2 * s.next_hop_timeout
                                + s.command_timeout)
            try:
                replies = await self.proxy.handle_message(self, txn, raw)
            finally:
                self.processing = False
                self.restart_idle_timer()
        for reply in replies:
            await self.push(_format(reply))
        await self._after_transaction()

    async def _read_data(self) -> bytes | None:
        """The message, unstuffed; None when it was larger than max_message_size (read to
        its end and dropped). Only CRLF.CRLF ends it: a bare LF before a dot is content."""
        limit = self.proxy.settings.smtp.max_message_size
        buf = bytearray()
        too_big = False
        since_reset = 0
        reader = self.client_stream()
        while True:
            try:
                piece = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                piece = await reader.read(exc.consumed)
                complete = False
            except asyncio.IncompleteReadError as exc:
                raise ConnectionResetError("client went away during DATA") from exc
            else:
                complete = True
            buf += piece
            since_reset += len(piece)
            if since_reset >= READ_LIMIT:
                self.restart_idle_timer()
                since_reset = 0
            if complete:
                end = len(buf) - 3
                if end == 0 or buf[end - 2:end] == b"\r\n":
                    del buf[end:]
                    break
            if limit and len(buf) > limit + 4:
                too_big = True
                del buf[:-4]  # keep the tail: the terminator may straddle two reads
        if too_big:
            return None
        data = unstuff(bytes(buf))
        if limit and len(data) > limit:
            return None
        return data

    # --- what the front end knows about the client ------------------------------------------

    def envelope_of(self, txn: ClientTransaction) -> Envelope:
        xf = self.xforward
        return Envelope(
            mail_from=txn.mail_from,
            rcpt_tos=tuple(a for a, _p in txn.rcpts),
            mail_options=tuple(txn.mail_params),
            rcpt_options=tuple(tuple(p) for _a, p in txn.rcpts),
            client_addr=xf.get("ADDR") or self.peer_addr,
            client_name=xf.get("NAME"),
            helo=xf.get("HELO") or self.sess().host_name,
            queue_id=xf.get("IDENT"),
        )


class ProxyLMTPSession(ProxySession):
    lmtp = True

    async def smtp_LHLO(self, hostname: str | None) -> None:  # noqa: N802
        await self._ehlo(hostname)


ProxySession.command_size_limits = collections.defaultdict(
    lambda: ProxySession.command_size_limit)


class SmtpProxy:
    """The listening side and the message flow: scan -> policy -> relay / quarantine /
    refuse, through the service's one `handler`. A `FrontEnd` (base.py); `settings` may be
    replaced while running (SIGHUP)."""

    name: Final = "smtp"
    relays: Final = True

    def __init__(self, settings: Settings, handler: MessageHandler, relay: RelayPool) -> None:
        self.settings = settings
        self.handler = handler
        self.relay = relay
        self.hostname = local_hostname(settings.smtp.hostname)
        self.tls_context = _tls_context(settings)
        self.clients = AllowedClients(settings.smtp.allowed_clients)
        self.sessions: set[ProxySession] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    def reconfigure(self, settings: Settings) -> None:
        """New settings for the next messages (listen address and TLS need a restart; the
        relay pool, shared with the report sender, and the handler, shared with the other
        front ends, are reconfigured by the service)."""
        self.settings = settings
        self.clients = AllowedClients(settings.smtp.allowed_clients)

    # --- serving ---------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_host_port(self.settings.smtp.listen)
        session_class = ProxyLMTPSession if self.settings.smtp.protocol == "lmtp" \
            else ProxySession
        self._server = await asyncio.get_running_loop().create_server(
            lambda: session_class(self), host=host, port=port, reuse_address=True,
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        log.info("listening", extra={"fields": {
            "listen": f"{self.address[0]}:{self.address[1]}",
            "protocol": self.settings.smtp.protocol, "next_hop": self.settings.smtp.next_hop}})

    def refusal(self, peer: str | None) -> Reply | None:
        """Why a new connection is refused, or None."""
        if self.draining:
            return SHUTTING_DOWN
        if not self.clients.allows(peer):
            log.warning("connection refused: client not allowed",
                        extra={"fields": {"client": peer}})
            self.count_error("client-not-allowed")
            return Reply(554, "5.7.1", "Client not allowed")
        if len(self.sessions) >= self.settings.smtp.max_connections:
            self.count_error("too-many-connections")
            return Reply(421, "4.7.0", "Too many connections, try again later")
        return None

    async def drain(self, timeout: float) -> None:
        """Stop accepting; close idle sessions; wait up to `timeout` for messages in flight,
        then close what is left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if session.close_when_idle():
                    self.sessions.discard(session)
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.transport is not None:
                log.warning("closing a session still busy at shutdown",
                            extra={"fields": {"client": session.peer_addr}})
                session.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    def connections(self) -> int:
        return len(self.sessions)

    def count_error(self, reason: str) -> None:
        self.handler.count_error(reason)

    @property
    def scanner(self) -> Scanner:
        return self.handler.scanner

    @property
    def quarantine(self) -> QuarantineStore:
        return self.handler.quarantine

    # --- one message -------------------------------------------------------------------------

    async def handle_message(self, session: ProxySession, txn: ClientTransaction,
                             raw: bytes) -> list[Reply]:
        """The replies for a received message (one, or one per recipient with LMTP). Never
        raises: anything unexpected is logged and answered 451."""
        started = time.perf_counter()
        received = time.time()
        msg_id = new_id(received)
        envelope = session.envelope_of(txn)
        handler = self.handler
        try:
            async with handler.slots:
                outcome = await self._process(handler, msg_id, received, envelope, txn, raw)
        except asyncio.CancelledError:
            txn.next_hop.abort()
            raise
        except Exception:
            log.exception("unexpected error while handling a message",
                          extra={"fields": {"id": msg_id}})
            txn.next_hop.abort()
            self.count_error("internal")
            outcome = MessageOutcome(msg_id, decide_error("internal", self.settings.policy),
                                     INTERNAL_ERROR, None, {})
        outcome.stages["total"] = time.perf_counter() - started
        handler.finish(outcome, envelope, len(raw), self.name)
        return [outcome.reply] * (len(txn.rcpts) if session.lmtp else 1)

    async def _process(self, handler: MessageHandler, msg_id: str, received: float,
                       envelope: Envelope, txn: ClientTransaction, raw: bytes
                       ) -> MessageOutcome:
        decision = await handler.decide(msg_id, received, raw)
        action, result, stages = decision.action, decision.result, decision.stages
        acted = time.perf_counter()
        if action.relays:
            reply = await self._relay(msg_id, action, result, txn, raw)
            stages["relay"] = time.perf_counter() - acted
        elif action.kind is ActionKind.QUARANTINE:
            txn.next_hop.abort()
            reply, _ = await handler.quarantine_message(decision, envelope, raw, self.name)
        else:
            txn.next_hop.abort()
            reply = action.reply or INTERNAL_ERROR
        return MessageOutcome(msg_id, action, reply, result, stages)

    async def _relay(self, msg_id: str, action: Action, result: ScanResult | None,
                     txn: ClientTransaction, raw: bytes) -> Reply:
        header = header_value(action, result, self.settings.smtp.add_header)
        message = raw if header is None else b"X-Mailfilter: " + header.encode() + b"\r\n" + raw
        try:
            reply = await txn.next_hop.send(message)
        except NextHopUnavailable as exc:
            log.warning("relay failed", extra={"fields": {"id": msg_id, "error": exc.detail}})
            self.count_error("next-hop-failed")
            return exc.reply
        if reply.positive:
            return Reply(250, "2.0.0", f"Ok {msg_id}, next hop: {reply.text}"[:400])
        return reply
