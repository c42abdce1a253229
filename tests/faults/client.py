"""A sending client for the fault tests: a plain SMTP client over a real socket that records,
for each attempt, the reply that decided it (in the ledger), as an MTA's queue would.

It retries a refused message the way an MTA does (4xx: again later; 5xx: never), so a test
can run traffic through a fault and its recovery and then check the accounting.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP

from factories import jpeg, message
from proxy.proxy_harness import KNOWN

from faults.ledger import SEQ_HEADER, Attempt, Ledger


class _Closed(Exception):
    pass


class _Conversation:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, str]:
        lines: list[str] = []
        while True:
            raw = self.file.readline(65536)
            if not raw:
                raise _Closed("connection closed" + (": " + " | ".join(lines) if lines else ""))
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                try:
                    return int(line[:3]), "\n".join(lines)
                except ValueError:
                    raise _Closed(f"not an SMTP reply: {line[:80]!r}") from None

    def command(self, line: str) -> tuple[int, str]:
        self.sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def dot_stuffed(raw: bytes) -> bytes:
    """The message as sent after DATA, end-of-data line included (CRLF messages only)."""
    body = raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    body = body.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n"


@dataclass
class Pause:
    """Send `after` bytes of the message, then call `hook` (or sleep `seconds`) before the
    rest: a client that is in the middle of DATA when something happens."""

    after: int
    seconds: float = 0.0
    hook: Callable[[], None] | None = None


def attempt(host: str, port: int, raw: bytes, *, mail_from: str = "sender@example.org",
            mail_params: str = "", rcpts: Iterable[str] = ("rcpt@example.net",),
            timeout: float = 60.0, pause: Pause | None = None) -> Attempt:
    """One delivery attempt; the reply that decided it (or code None: no reply).
    `mail_from` and `rcpts` may hold surrogate escapes: they go out as those bytes."""
    started = time.monotonic()
    stage = "connect"

    def done(code: int | None, text: str) -> Attempt:
        return Attempt(code, stage, text, time.monotonic() - started)

    try:
        conv = _Conversation(host, port, timeout)
    except OSError as exc:
        return done(None, f"connect failed: {exc}")
    try:
        code, text = conv.reply()
        if code != 220:
            return done(code, text)
        stage = "EHLO"
        code, text = conv.command("EHLO client.test")
        if code != 250:
            return done(code, text)
        stage = "MAIL"
        code, text = conv.command(f"MAIL FROM:<{mail_from}>"
                                  + (f" {mail_params}" if mail_params else ""))
        if code != 250:
            return done(code, text)
        stage = "RCPT"
        for rcpt in rcpts:
            code, text = conv.command(f"RCPT TO:<{rcpt}>")
            if code not in (250, 251):
                # (every test message has recipients the next hop takes; a refusal here
                # is the fault under test and refuses the whole message)
                return done(code, text)
        stage = "DATA"
        code, text = conv.command("DATA")
        if code != 354:
            return done(code, text)
        stage = "end-of-data"
        wire = dot_stuffed(raw)
        if pause is not None:
            conv.sock.sendall(wire[:pause.after])
            if pause.hook is not None:
                pause.hook()
            else:
                time.sleep(pause.seconds)
            conv.sock.sendall(wire[pause.after:])
        else:
            conv.sock.sendall(wire)
        code, text = conv.reply()
        result = done(code, text)
        with contextlib.suppress(OSError, _Closed):
            conv.command("QUIT")
        return result
    except (OSError, _Closed) as exc:
        return done(None, f"{type(exc).__name__}: {exc}")
    finally:
        conv.close()


def deliver(ledger: Ledger, seq: str, raw: bytes, host: str, port: int, *,
            retries: int = 0, retry_delay: float = 0.5, timeout: float = 60.0,
            pause: Pause | None = None) -> Attempt:
    """Send like an MTA: again after a 4xx (or no reply) up to `retries` times, never after
    a 2xx or 5xx. Every attempt goes into the ledger; the last one is returned."""
    tries = 0
    while True:
        result = attempt(host, port, raw, timeout=timeout, pause=pause if tries == 0 else None)
        ledger.record(seq, result)
        tries += 1
        if result.accepted or (result.code is not None and result.code >= 500) \
                or tries > retries:
            return result
        time.sleep(retry_delay)


# --- test messages ----------------------------------------------------------------------

KINDS = ("text", "photo", "photos", "known", "unscannable")


@functools.lru_cache(maxsize=64)
def _photo(seed: int) -> bytes:
    return jpeg(seed, 480, 360)


def make_message(seq: str, kind: str = "text", seed: int = 1) -> bytes:
    """A CRLF message with the sequence header: `text`; `photo` (one generated photo);
    `photos` (three); `known` (the enrolled stand-in: a match); `unscannable` (a truncated
    JPEG: the message cannot be fully examined)."""
    attachments: list[tuple[str, str, bytes]] = []
    if kind == "photo":
        attachments = [("p.jpg", "image/jpeg", _photo(seed % 32))]
    elif kind == "photos":
        attachments = [(f"p{i}.jpg", "image/jpeg", _photo((seed + i) % 32)) for i in range(3)]
    elif kind == "known":
        attachments = [("k.jpg", "image/jpeg", KNOWN)]
    elif kind == "unscannable":
        attachments = [("cut.jpg", "image/jpeg", _photo(seed % 32)[:1500])]
    elif kind != "text":
        raise ValueError(f"unknown kind {kind!r}")
    msg: EmailMessage = message(subject=f"{kind} {seq}", body=f"Message {seq}.\n",
                                attachments=attachments)
    msg[SEQ_HEADER] = seq
    return msg.as_bytes(policy=SMTP)


# --- many senders at once ---------------------------------------------------------------


def run_all(jobs: Iterable[Callable[[], object]], concurrency: int) -> None:
    """Run the jobs on `concurrency` threads and wait for all of them; the first
    exception of a job is raised (after every job has finished)."""
    errors: list[BaseException] = []
    lock = threading.Lock()

    def guarded(job: Callable[[], object]) -> None:
        try:
            job()
        except BaseException as exc:
            with lock:
                errors.append(exc)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for job in jobs:
            pool.submit(guarded, job)
    if errors:
        raise errors[0]
