"""Relaying to the next hop (`smtp_client.py`), one next-hop transaction per client transaction.

The SMTP front end mirrors the client's envelope to the next hop as it arrives: the client's
MAIL FROM opens a `NextHopTransaction` (XFORWARD, then MAIL FROM with the client's
parameters), each RCPT TO is sent on and the next hop's answer is what the client gets.
So a recipient the next hop refuses is refused to the client with the next hop's own code
(4xx: the client retries it; 5xx: the client bounces it), and no recipient is acknowledged
that the next hop did not accept. After DATA the message is sent (`send`) or the
transaction is dropped (`abort`: quarantine, reject, tempfail).

Connection reuse: `RelayPool` keeps up to `next_hop_pool_size` idle connections for
`next_hop_idle_time`; more (as many as were in use at once) only for `SURPLUS_IDLE_TIME`, so
a burst of concurrent messages reuses connections instead of opening and closing one per
message, and the surplus is closed soon after the burst. A connection whose last transaction
ended cleanly (its DATA was answered, or an RSET was) is reused as it is; one left with a
transaction open (MAIL refused, or aborted after MAIL) is first checked and cleared with
RSET. One that fails any command, times out or was in the middle of a command when its user
went away is closed, never reused. Since an unchecked idle connection may have been closed
by the next hop just as it is taken (its idle timeout), a transaction that fails to open on
one (the connection drops, or the next hop says 421) is opened once more on a new
connection: that is never a failure the client sees when a new connection would work.

If the connection held for a transaction is found closed when the message is ready (the
next hop dropped it while the message was being scanned), the envelope is replayed on a new
connection; the message is only sent when the next hop accepts MAIL and every recipient the
client was told was accepted, otherwise the client gets 451 and retries the whole message.

Message bytes go out as aiosmtplib's `SMTP.data` would send them (`wire_data`), every bare
CR or LF turned into CRLF and every line that begins with a dot dot-stuffed: a message whose
lines all end in CRLF (all mail Postfix sends) is relayed byte for byte, and a bare LF
before a dot can never end the DATA at the next hop early (SMTP smuggling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from mailfilter.actions.smtp_client import SmtpClient, SmtpClientError
from mailfilter.actions.smtp_replies import SmtpReply
from mailfilter.model import Reply
from mailfilter.settings import SmtpSettings, split_host_port

__all__ = [
    "NextHopConnection",
    "NextHopTransaction",
    "NextHopUnavailable",
    "RelayPool",
    "xtext_decode",
    "xtext_encode",
]

log = logging.getLogger("mailfilter.relay")

XFORWARD_MAX_LINE: Final = 512
UNAVAILABLE_REPLY: Final = Reply(451, "4.4.1", "Next hop not reachable, try again later")
DROPPED_REPLY: Final = Reply(451, "4.4.2", "Connection to the next hop lost, try again later")
CHANGED_REPLY: Final = Reply(451, "4.4.2", "Next hop changed its answer, try again later")
SURPLUS_IDLE_TIME: Final = 1.0
_ENHANCED: Final = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")


class NextHopUnavailable(Exception):
    """The next hop could not be reached or the connection failed: answer `reply` (4xx)."""

    def __init__(self, reply: Reply, detail: str = "") -> None:
        super().__init__(f"{reply}: {detail}" if detail else str(reply))
        self.reply = reply
        self.detail = detail


def xtext_encode(value: str) -> str:
    """RFC 3461 xtext: '+', '=', controls, space and non-ASCII as +HH (of the UTF-8)."""
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def xtext_decode(value: str) -> str:
    def one(m: re.Match[str]) -> str:
        return chr(int(m.group(1), 16))

    decoded = re.sub(r"\+([0-9A-Fa-f]{2})", one, value)
    return decoded.encode("latin-1", "replace").decode("utf-8", "replace")


def mirror(code: int, message: str, fallback_enhanced: str = "") -> Reply:
    """The next hop's reply as ours: its code, its enhanced code (or one derived from the
    class), its first line of text."""
    text = (message or "").splitlines()[0] if message else ""
    enhanced, _, rest = text.partition(" ")
    if _ENHANCED.match(enhanced) and enhanced[0] == str(code)[0]:
        text = rest
    else:
        enhanced = fallback_enhanced or f"{str(code)[0]}.0.0"
    text = "".join(c for c in text if c.isprintable())[:200] or "next hop"
    return Reply(code, enhanced, text)


@dataclass
class NextHopConnection:
    smtp: SmtpClient
    created: float
    last_used: float
    messages: int = 0
    busy: bool = False  # a command is in flight: if its user goes away, it cannot be reused
    broken: bool = False
    # No transaction is open on it (new, DATA answered, or RSET done): reusable without RSET
    clean: bool = True

    @property
    def extensions(self) -> Mapping[str, str]:
        return self.smtp.extensions

    def supports(self, name: str) -> bool:
        return self.smtp.supports(name)

    @property
    def usable(self) -> bool:
        return not self.broken and not self.busy and self.smtp.is_connected

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            self.smtp.close()


@dataclass
class RelayStats:
    opened: int = 0
    reused: int = 0
    discarded: int = 0
    last_ok: float = 0.0  # monotonic time of the last successful exchange
    last_failure: float = 0.0
    last_error: str = ""


class RelayPool:
    def __init__(self, settings: SmtpSettings, local_hostname: str) -> None:
        self.settings = settings
        self.host, self.port = split_host_port(settings.next_hop)
        self.local_hostname = local_hostname
        self._idle: list[NextHopConnection] = []  # oldest first; reuse takes the newest
        self._trim_handle: asyncio.TimerHandle | None = None
        self.stats = RelayStats()
        self._closed = False

    def configure(self, settings: SmtpSettings) -> None:
        """New settings (SIGHUP). Idle connections to an old next hop are dropped."""
        if settings.next_hop != self.settings.next_hop or (
            settings.next_hop_starttls != self.settings.next_hop_starttls
            or settings.next_hop_verify != self.settings.next_hop_verify
        ):
            self.drop_idle()
        self.settings = settings
        self.host, self.port = split_host_port(settings.next_hop)

    @property
    def timeout(self) -> float:
        return self.settings.next_hop_timeout

    def _ok(self) -> None:
        self.stats.last_ok = time.monotonic()

    def failed(self, detail: str) -> None:
        self.stats.last_failure = time.monotonic()
        self.stats.last_error = detail

    async def _open(self) -> NextHopConnection:
        try:
            smtp = await SmtpClient.connect(
                self.host, self.port, local_hostname=self.local_hostname,
                timeout=self.timeout, starttls=self.settings.next_hop_starttls,
                verify=self.settings.next_hop_verify,
            )
        except (SmtpClientError, OSError, TimeoutError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            self.failed(detail)
            raise NextHopUnavailable(UNAVAILABLE_REPLY, detail) from exc
        self.stats.opened += 1
        self._ok()
        now = time.monotonic()
        return NextHopConnection(smtp, now, now)

    async def acquire(self) -> NextHopConnection:
        """A connection ready for MAIL FROM: an idle clean one as it is (`checked` False),
        an idle one that answers RSET, else a new one."""
        conn, _checked = await self.acquire_checked()
        return conn

    async def acquire_checked(self) -> tuple[NextHopConnection, bool]:
        """`acquire`, and whether the connection is known to work now (new, or it just
        answered RSET). One that is not may turn out closed at its first command."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable or now - conn.last_used > self.settings.next_hop_idle_time:
                conn.close()
                self.stats.discarded += 1
                continue
            if conn.clean:
                self.stats.reused += 1
                return conn, False
            try:
                conn.busy = True
                response = await conn.smtp.rset()
                conn.busy = False
            except (SmtpClientError, OSError, TimeoutError):
                conn.close()
                self.stats.discarded += 1
                continue
            if response.code != 250:
                conn.close()
                self.stats.discarded += 1
                continue
            conn.clean = True
            self.stats.reused += 1
            self._ok()
            return conn, True
        return await self._open(), True

    def release(self, conn: NextHopConnection) -> None:
        """Give a connection back; it is kept only if it is healthy and there is room.
        A transaction left open on it (`clean` False) is cleared by the RSET of the next
        `acquire`."""
        now = conn.last_used = time.monotonic()
        if self._closed or not conn.usable or self.settings.next_hop_pool_size <= 0:
            self._discard(conn)
            return
        self._idle.append(conn)
        self._trim(now)

    def _trim(self, now: float) -> None:
        """Close idle connections beyond `next_hop_pool_size` that have been idle for
        SURPLUS_IDLE_TIME (oldest first); look again later while there is a surplus."""
        surplus = len(self._idle) - self.settings.next_hop_pool_size
        while surplus > 0 and now - self._idle[0].last_used >= SURPLUS_IDLE_TIME:
            self._discard(self._idle.pop(0))
            surplus -= 1
        if surplus > 0 and self._trim_handle is None:
            self._trim_handle = asyncio.get_running_loop().call_later(
                SURPLUS_IDLE_TIME, self._trim_later)

    def _trim_later(self) -> None:
        self._trim_handle = None
        self._trim(time.monotonic())

    def _discard(self, conn: NextHopConnection) -> None:
        self.stats.discarded += 1
        if conn.usable:
            # Say goodbye politely in the background; closing is enough if that fails.
            task = asyncio.get_running_loop().create_task(self._quit(conn))
            _background.add(task)
            task.add_done_callback(_background.discard)
        else:
            conn.close()

    async def _quit(self, conn: NextHopConnection) -> None:
        try:
            await asyncio.wait_for(conn.smtp.quit(), 5.0)
        except Exception:  # a goodbye that failed changes nothing
            pass
        finally:
            conn.close()

    def drop_idle(self) -> None:
        if self._trim_handle is not None:
            self._trim_handle.cancel()
            self._trim_handle = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    async def close(self) -> None:
        self._closed = True
        self.drop_idle()
        if _background:
            await asyncio.wait(set(_background), timeout=5.0)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def probe(self, timeout: float = 2.0) -> bool:
        """Whether the next hop accepts TCP connections now (for /readyz)."""
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def begin(self, xforward: Mapping[str, str], mail_from: str,
              mail_params: Sequence[str]) -> NextHopTransaction:
        return NextHopTransaction(self, dict(xforward), mail_from, tuple(mail_params))


_background: set[asyncio.Task[None]] = set()


def _params_for(conn: NextHopConnection, params: Sequence[str]) -> list[str]:
    """The client's ESMTP parameters the next hop can take. DSN parameters are dropped when
    it lacks DSN (as Postfix does), BODY= when it lacks 8BITMIME (the body is sent as is,
    like Postfix with disable_mime_output_conversion), SIZE= when it lacks SIZE."""
    out = []
    for p in params:
        key = p.partition("=")[0].upper()
        if key in ("RET", "ENVID", "NOTIFY", "ORCPT") and not conn.supports("dsn"):
            continue
        if key == "BODY" and not conn.supports("8bitmime"):
            continue
        if key == "SIZE" and not conn.supports("size"):
            continue
        out.append(p)
    return out


@dataclass
class NextHopTransaction:
    """The next-hop side of one client transaction (see the module's docstring)."""

    pool: RelayPool
    xforward: dict[str, str]
    mail_from: str
    mail_params: tuple[str, ...]
    conn: NextHopConnection | None = None
    accepted: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    started: bool = False

    def _failed(self, conn: NextHopConnection, exc: Exception) -> NextHopUnavailable:
        conn.close()
        detail = f"{type(exc).__name__}: {exc}"
        self.pool.failed(detail)
        return NextHopUnavailable(DROPPED_REPLY, detail)

    async def _command(self, conn: NextHopConnection, *parts: str) -> SmtpReply:
        conn.busy = True
        try:
            return await conn.smtp.command(*parts)
        except (SmtpClientError, OSError, TimeoutError) as exc:
            raise self._failed(conn, exc) from exc
        finally:
            conn.busy = False

    def _xforward_commands(self, conn: NextHopConnection) -> list[list[str]]:
        """XFORWARD commands for what the next hop offers, each line within its limit."""
        offered = conn.extensions.get("xforward")
        if offered is None or not self.xforward:
            return []
        names = {n.upper() for n in offered.split()}
        attrs = [f"{k}={xtext_encode(v)}" for k, v in self.xforward.items() if k in names]
        commands: list[list[str]] = []
        line: list[str] = []
        for attr in attrs:
            if line and len("XFORWARD " + " ".join([*line, attr])) > XFORWARD_MAX_LINE - 2:
                commands.append(["XFORWARD", *line])
                line = []
            line.append(attr)
        if line:
            commands.append(["XFORWARD", *line])
        return commands

    async def _mail(self, conn: NextHopConnection) -> SmtpReply:
        """XFORWARD (when offered) and MAIL FROM; in one write when the next hop offers
        PIPELINING, which saves a round trip per message. A refused XFORWARD is not fatal:
        the next hop then logs us as the client, as it would without XFORWARD."""
        if self.mail_from and "SMTPUTF8" in (p.upper() for p in self.mail_params) \
                and not conn.supports("smtputf8"):
            # The next hop could not take this message; a configuration to fix, so the
            # client keeps the message and retries rather than bouncing it.
            raise NextHopUnavailable(
                Reply(451, "4.6.7", "Next hop does not support SMTPUTF8, try again later"))
        # From here until DATA is answered (or RSET), a transaction may be open on it.
        conn.clean = False
        commands = self._xforward_commands(conn)
        commands.append(["MAIL", f"FROM:<{self.mail_from}>",
                         *_params_for(conn, self.mail_params)])
        if len(commands) == 1 or not conn.supports("pipelining"):
            for command in commands[:-1]:
                await self._command(conn, *command)
            return await self._command(conn, *commands[-1])
        conn.busy = True
        try:
            replies = await conn.smtp.pipeline(commands)
        except (SmtpClientError, OSError, TimeoutError) as exc:
            raise self._failed(conn, exc) from exc
        finally:
            conn.busy = False
        return replies[-1]

    async def _open_mail(self) -> tuple[NextHopConnection, SmtpReply]:
        """A connection and the next hop's answer to our XFORWARD + MAIL FROM on it. An
        unchecked idle connection that turns out closed (dropped, or 421) is replaced once
        by a new connection."""
        conn, checked = await self.pool.acquire_checked()
        try:
            response = await self._mail(conn)
        except NextHopUnavailable as exc:
            self._drop(conn)
            if checked or exc.reply is not DROPPED_REPLY:
                raise
            retry_why = exc.detail
        except BaseException:
            self._drop(conn)
            raise
        else:
            if checked or response.code != 421:
                return conn, response
            self._drop(conn)
            retry_why = f"{response.code} {response.message}"
        log.info("idle next-hop connection found closed, opening a new one",
                 extra={"fields": {"error": retry_why[:200]}})
        conn = await self.pool._open()
        try:
            return conn, await self._mail(conn)
        except BaseException:
            self._drop(conn)
            raise

    async def start(self) -> Reply | None:
        """Open the transaction at the next hop: None when it accepted MAIL FROM, else its
        refusal to mirror. NextHopUnavailable when it cannot be reached."""
        conn, response = await self._open_mail()
        if response.code != 250:
            self.pool.release(conn)
            return mirror(response.code, response.message, f"{str(response.code)[0]}.1.0")
        self.conn = conn
        self.started = True
        self.pool._ok()
        return None

    async def rcpt(self, address: str, params: Sequence[str]) -> Reply:
        """Send RCPT TO on; the next hop's answer as the reply for the client."""
        conn = self.conn
        if conn is None or not conn.usable:
            self.conn = conn = await self._replay()
        response = await self._command(conn, "RCPT", f"TO:<{address}>",
                                       *_params_for(conn, params))
        if response.code in (250, 251):
            self.accepted.append((address, tuple(params)))
            return Reply(250, "2.1.5", "Ok")
        return mirror(response.code, response.message, f"{str(response.code)[0]}.1.0")

    async def _replay(self) -> NextHopConnection:
        """A fresh connection with this transaction's envelope on it, or NextHopUnavailable
        when the next hop now answers differently."""
        if self.conn is not None:
            self._drop(self.conn)
            self.conn = None
        conn, response = await self._open_mail()
        try:
            if response.code != 250:
                raise NextHopUnavailable(CHANGED_REPLY, f"MAIL FROM: {response.code}")
            for address, params in self.accepted:
                response = await self._command(conn, "RCPT", f"TO:<{address}>",
                                               *_params_for(conn, params))
                if response.code not in (250, 251):
                    raise NextHopUnavailable(CHANGED_REPLY, f"RCPT TO: {response.code}")
        except BaseException:
            self._drop(conn)
            raise
        log.info("next-hop transaction replayed on a new connection",
                 extra={"fields": {"recipients": len(self.accepted)}})
        return conn

    async def send(self, message: bytes) -> Reply:
        """DATA: the next hop's final answer, mirrored. NextHopUnavailable (451) when the
        connection fails; the transaction is over either way."""
        conn = self.conn
        try:
            if conn is None or not conn.usable:
                self.conn = conn = await self._replay()
            conn.busy = True
            try:
                reply, sent = await conn.smtp.data(wire_data(message))
            except (SmtpClientError, OSError, TimeoutError) as exc:
                raise self._failed(conn, exc) from exc
            finally:
                conn.busy = False
            code, text = reply.code, reply.message
            if sent and code != 421:
                # The message was answered: the transaction is over. (A refusal of the
                # DATA command itself may leave it open: RSET before reuse.)
                conn.clean = True
            conn.messages += 1
            self.pool._ok()
            return mirror(code, text, "2.0.0" if code < 300 else f"{str(code)[0]}.3.0")
        finally:
            self.finish()

    def finish(self) -> None:
        """End the transaction without sending: the connection goes back to the pool (its
        next user's RSET clears the transaction)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.release(conn)

    abort = finish

    def _drop(self, conn: NextHopConnection) -> None:
        if conn.busy or conn.broken:
            conn.close()
            self.pool.stats.discarded += 1
        else:
            self.pool.release(conn)


_LINE_ENDS: Final = re.compile(rb"(?:\r\n|\n|\r(?!\n))")


def wire_data(message: bytes) -> bytes:
    """The message as sent after DATA, end-of-data line included: every bare CR or LF as
    CRLF, a CRLF at the end, every line that begins with a dot with one more (exactly what
    aiosmtplib's `data` sends). A message whose line ends are all CRLF already (all mail
    Postfix sends) takes a few byte scans instead of a regular expression per line."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    # Every line end is CRLF now, so a line begins at the start or right after "\r\n".
    message = message.replace(b"\r\n.", b"\r\n..")
    if message.startswith(b"."):
        message = b"." + message
    return message + b".\r\n"


def local_hostname(configured: str) -> str:
    return configured or socket.getfqdn()
