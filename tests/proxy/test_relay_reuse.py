"""Reused next-hop connections: a connection whose last transaction ended cleanly is reused
without RSET; one the next hop closed while it sat idle (a race with our next MAIL) costs
the client nothing: the transaction is opened again on a new connection, exactly once."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest
from factories import message, message_bytes

from proxy.proxy_harness import RecordingSink, RunningProxy, serving
from proxy.test_proxy import send

Factory = Callable[..., RunningProxy]


class Closer:
    """A next hop that takes one message per connection, then answers the next command on
    that connection with `goodbye` (None: closes without a word), as a next hop does whose
    idle timeout fired just as the proxy reused the connection."""

    def __init__(self, goodbye: str | None) -> None:
        self.goodbye = goodbye
        self.connections = 0
        self.messages: list[bytes] = []
        self.commands: list[str] = []
        self.lock = threading.Lock()
        self.port = 0


def _handler(state: Closer) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")
            self.wfile.flush()

        def handle(self) -> None:
            with state.lock:
                state.connections += 1
            self.reply("220 closer.test ESMTP")
            done = False
            while True:
                raw = self.rfile.readline()
                if not raw:
                    return
                line = raw.rstrip(b"\r\n").decode()
                with state.lock:
                    state.commands.append(line)
                verb = line.split(" ", 1)[0].upper()
                if done and verb not in ("QUIT",):
                    if state.goodbye is not None:
                        self.reply(state.goodbye)
                    return
                if verb == "EHLO":
                    self.reply("250-closer.test")
                    self.reply("250-PIPELINING")
                    self.reply("250 XFORWARD NAME ADDR PROTO HELO SOURCE PORT")
                elif verb in ("XFORWARD", "MAIL", "RCPT", "RSET", "NOOP"):
                    self.reply("250 2.0.0 Ok")
                elif verb == "DATA":
                    self.reply("354 go ahead")
                    body = []
                    while (d := self.rfile.readline()) not in (b".\r\n", b""):
                        body.append(d)
                    with state.lock:
                        state.messages.append(b"".join(body))
                    self.reply("250 2.0.0 Ok")
                    done = True
                elif verb == "QUIT":
                    self.reply("221 2.0.0 Bye")
                    return
                else:
                    self.reply("502 5.5.2 unknown")

    return Handler


@contextlib.contextmanager
def closer(goodbye: str | None) -> Iterator[Closer]:
    state = Closer(goodbye)
    with serving(_handler(state)) as port:
        state.port = port
        yield state


def test_clean_connection_reused_without_rset(proxy_factory: Factory,
                                              recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address)
    for i in range(3):
        assert send(p, message_bytes(message(subject=f"m{i}")))[0] == 250
    assert len(recording_sink.wait_for(3)) == 3
    assert recording_sink.connections == 1
    assert "RSET" not in recording_sink.commands


def test_connection_left_in_a_transaction_gets_rset(proxy_factory: Factory,
                                                    recording_sink: RecordingSink) -> None:
    recording_sink.rcpt_replies["nobody@example.net"] = "550 5.1.1 no such user"
    p = proxy_factory(recording_sink.address)
    import smtplib
    with smtplib.SMTP(p.host, p.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt("nobody@example.net")[0] == 550
        client.rset()  # the next-hop transaction is left open: aborted
    assert send(p, message_bytes(message(subject="after")))[0] == 250
    assert len(recording_sink.wait_for(1)) == 1
    assert recording_sink.commands.count("RSET") == 1
    assert recording_sink.connections == 1


@pytest.mark.parametrize("goodbye", [None, "421 4.4.2 closer.test idle timeout"])
def test_idle_connection_closed_by_next_hop_is_replaced(proxy_factory: Factory,
                                                        goodbye: str | None) -> None:
    with closer(goodbye) as hop:
        p = proxy_factory(f"127.0.0.1:{hop.port}")
        for i in range(4):
            code, text = send(p, message_bytes(message(subject=f"m{i}")))
            assert code == 250, text
        assert len(hop.messages) == 4  # each exactly once
        assert hop.connections == 4
        assert p.relay.stats.opened == 4


def test_wire_data_is_what_aiosmtplib_sends() -> None:
    import random

    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from mailfilter.actions.relay import wire_data

    def reference(m: bytes) -> bytes:
        return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(m)) + b".\r\n"

    rng = random.Random(5)
    pieces = [b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b"..", b" "]
    for _ in range(20000):
        m = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert wire_data(m) == reference(m), m
    raw = message_bytes(message(body=".leading\r\n..two\r\nplain\r\n"))
    assert wire_data(raw) == reference(raw)
