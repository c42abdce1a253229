"""Hostile SMTP clients against `mailfilter serve`, over real sockets: command injection
through the envelope, commands pipelined behind DATA, thousands of recipients in one write,
commands before the greeting, an endless command line, clients that trickle (slowloris) and
crowds of idle connections. Each gets a defined reply within a time bound; the next hop
sees exactly the transactions the client made, never a command smuggled into one; the
server's memory stays bounded and it keeps serving others."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

import pytest
from faults.client import attempt, dot_stuffed, make_message
from proxy.proxy_harness import RawClient

from hostile.harness import COMMAND_TIMEOUT, MAX_CONNECTIONS, HostileServer

MARGIN = 5.0  # seconds on top of command_timeout before a slow client must be gone


def _client(server: HostileServer) -> RawClient:
    c = RawClient("127.0.0.1", server.port, timeout=COMMAND_TIMEOUT + 30)
    assert c.greeting.startswith("220")
    assert c.cmd("EHLO client.test").startswith("250")
    return c


def _commands_since(server: HostileServer, mark: int) -> list[str]:
    with server.sink.lock:
        return list(server.sink.commands[mark:])


def _send_raw(c: RawClient, line: bytes) -> str:
    c.send(line + b"\r\n")
    return c.read_reply()


@pytest.mark.parametrize("where", ["MAIL", "RCPT"])
def test_line_end_in_the_envelope_is_never_a_command(server: HostileServer, where: str) -> None:
    """A bare CR inside an address (the client's line ends at CRLF) must not become a line
    end at the next hop: no command there holds a CR, none is the smuggled one."""
    mark = len(server.sink.commands)
    c = _client(server)
    smuggle = "a@example.org\rRCPT TO:evil@attacker.example"
    if where == "MAIL":
        reply = c.cmd(f"MAIL FROM:<{smuggle}>")
    else:
        assert c.cmd("MAIL FROM:<a@example.org>").startswith("250")
        reply = c.cmd(f"RCPT TO:<{smuggle}>")
    assert reply[0] in "45", reply  # refused (the sender keeps the message)
    assert c.cmd("NOOP").startswith("250")  # the session goes on
    c.cmd("QUIT")
    c.close()
    sent = _commands_since(server, mark)
    assert not any("\r" in x or "\n" in x for x in sent), sent
    assert not any(x.upper().startswith("RCPT TO:EVIL") for x in sent), sent


@pytest.mark.parametrize("bad", ["\r", "\x00", "\x1b"])
def test_control_characters_in_the_envelope_are_syntax_errors(server: HostileServer,
                                                              bad: str) -> None:
    mark = len(server.sink.commands)
    c = _client(server)
    mail = c.cmd(f"MAIL FROM:<a{bad}b@example.org>")
    assert c.cmd("MAIL FROM:<a@example.org>").startswith("250")
    rcpt = c.cmd(f"RCPT TO:<c{bad}d@example.net>")
    c.close()
    assert mail.startswith("501 5.") and rcpt.startswith("501 5."), (mail, rcpt)
    assert not any(bad in x for x in _commands_since(server, mark))


def test_commands_pipelined_behind_data(server: HostileServer) -> None:
    """Two whole transactions and QUIT in one write: two messages, each delivered once, the
    replies in order; nothing of the second leaks into the first."""
    raws = [make_message(f"pipe-{i}") for i in range(2)]
    wire = b"".join(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
                    + dot_stuffed(raw) for raw in raws) + b"QUIT\r\n"
    c = RawClient("127.0.0.1", server.port, timeout=60)
    c.cmd("EHLO client.test")
    c.send(wire)
    replies = [c.read_reply()[:3] for _ in range(9)]
    c.close()
    assert replies == ["250", "250", "354", "250", "250", "250", "354", "250", "221"]
    for i in range(2):
        [got] = server.delivered(f"pipe-{i}")
        assert got == b"X-Mailfilter: clean\r\n" + raws[i]


def test_thousands_of_recipients_in_one_write(server: HostileServer) -> None:
    raw = make_message("many-rcpts")
    c = RawClient("127.0.0.1", server.port, timeout=120)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@example.org>").startswith("250")
    started = time.monotonic()
    c.send(b"".join(f"RCPT TO:<r{i}@example.net>\r\n".encode() for i in range(5000)))
    replies = [c.read_reply()[:9] for _ in range(5000)]
    assert replies.count("250 2.1.5") == 1000  # the recipient limit; the rest 452
    assert replies[1000:] == ["452 4.5.3"] * 4000
    assert c.cmd("DATA").startswith("354")
    c.send(dot_stuffed(raw))
    assert c.read_reply().startswith("250")
    c.close()
    assert time.monotonic() - started < 60
    [got] = [m for m in server.sink.messages if b"X-Test-Seq: many-rcpts" in m.data]
    assert len(got.rcpts) == 1000


def test_commands_before_the_greeting(server: HostileServer) -> None:
    """A client that talks before the 220: answered in order after it, nothing crashes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"EHLO early.test\r\nNOOP\r\nQUIT\r\n")
        data = b""
        while b"221" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.decode().split("\r\n")
    assert lines[0].startswith("220") and "221 " in data.decode()[-60:], data


def test_endless_command_line(server: HostileServer) -> None:
    """20 MB without a line end, then one: refused as too long, read and dropped as it
    comes (memory bounded), and the session goes on."""
    c = _client(server)
    chunk = b"X" * (1 << 20)
    for _ in range(20):
        c.send(chunk)
    assert _send_raw(c, b"").startswith("500")
    assert c.cmd("NOOP").startswith("250")
    c.close()


def test_slowloris_command(server: HostileServer) -> None:
    """One byte every half second, never a whole command: gone after command_timeout."""
    c = RawClient("127.0.0.1", server.port, timeout=30)
    started = time.monotonic()
    closed = False
    try:
        for byte in b"EHLO slow.client.example.org and more and more":
            c.send(bytes([byte]))
            time.sleep(0.5)
            if time.monotonic() - started > COMMAND_TIMEOUT + MARGIN:
                break
    except OSError:
        closed = True
    if not closed:
        try:
            reply = c.read_reply()
            assert reply.startswith("421"), reply
            c.read_reply()
        except (OSError, ConnectionError):
            closed = True
    assert closed
    assert time.monotonic() - started < COMMAND_TIMEOUT + MARGIN
    c.close()


def test_slowloris_data(server: HostileServer) -> None:
    """A message trickled one byte every half second: cut off with 421 after
    command_timeout (the clock restarts only every 64 KB of DATA), nothing relayed."""
    c = _client(server)
    c.cmd("MAIL FROM:<a@example.org>")
    c.cmd("RCPT TO:<b@example.net>")
    assert c.cmd("DATA").startswith("354")
    started = time.monotonic()
    reply = ""
    try:
        for byte in b"X-Test-Seq: slow-data\r\nSubject: slow\r\n\r\n" * 10:
            c.send(bytes([byte]))
            time.sleep(0.5)
            if time.monotonic() - started > COMMAND_TIMEOUT + MARGIN:
                break
    except OSError:
        pass
    with contextlib.suppress(OSError, ConnectionError):  # (closed without a word)
        reply = c.read_reply()
    assert reply.startswith("421") or reply == "", reply
    assert time.monotonic() - started < COMMAND_TIMEOUT + MARGIN
    c.close()
    assert server.delivered("slow-data") == []


def _open_connections(server: HostileServer) -> float:
    m = re.search(r"^mailfilter_smtp_connections (\S+)$", server.served.metrics(), re.M)
    assert m, "no mailfilter_smtp_connections gauge"
    return float(m.group(1))


def _wait_for_no_connections(server: HostileServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _open_connections(server) > 0:
        assert time.monotonic() < deadline, "earlier connections still open on the server"
        time.sleep(0.1)


def test_crowd_of_idle_connections(server: HostileServer) -> None:
    """Twice max_connections connect at once and say nothing (fewer than the listen
    backlog of 100, so none waits for a SYN retry): max_connections are served, the rest get
    421 at once; the idle ones are closed after command_timeout, and then a message goes
    through."""
    # Sessions of earlier tests may still be closing on the server's side (a cut-off slow
    # client is counted until its transport is gone); they would take places of the crowd.
    _wait_for_no_connections(server)
    clients: list[socket.socket] = []
    greetings: list[bytes] = []
    lock = threading.Lock()

    def connect() -> None:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        first = s.recv(200)
        with lock:
            clients.append(s)
            greetings.append(first)

    threads = [threading.Thread(target=connect) for _ in range(2 * MAX_CONNECTIONS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    served = sum(1 for g in greetings if g.startswith(b"220"))
    refused = sum(1 for g in greetings if g.startswith(b"421"))
    assert served + refused == 2 * MAX_CONNECTIONS, greetings
    # Exactly: only admitted sessions count, so neither the ones still being judged nor the
    # refused ones still closing take a place.
    assert served == MAX_CONNECTIONS, (served, refused)
    connected = time.monotonic() - started
    for s in clients:  # every idle one is closed by the server within command_timeout
        s.settimeout(COMMAND_TIMEOUT + MARGIN)
        try:
            while s.recv(200):
                pass
        except OSError:
            pass
        s.close()
    assert time.monotonic() - started < connected + COMMAND_TIMEOUT + MARGIN
    result = attempt("127.0.0.1", server.port, make_message("after-crowd"))
    assert result.accepted, result
