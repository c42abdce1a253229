"""A next hop with faults: a real SMTP server on a fixed loopback port that can be stopped
and started again on that port, slowed at any step, or made to drop the connection in the
middle of DATA. It keeps (as an MTA queues) each message whose end of DATA it read in full,
before it answers, as Postfix does: what it kept is what "delivered" means in the tests."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from conftest import free_port


@dataclass
class Faults:
    """What the next hop does wrong now (changed by tests while it runs)."""

    greeting_delay: float = 0.0  # before the 220
    data_command_delay: float = 0.0  # before the 354
    end_of_data_delay: float = 0.0  # after keeping the message, before its 250 (see data)
    drop_after: int | None = None  # close the connection after this many bytes of DATA...
    drops_left: int = 0  # ...for this many transactions


@dataclass
class NextHop:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    faults: Faults = field(default_factory=Faults)
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0
    dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: socketserver.ThreadingTCPServer | None = None
    _open: set[socket.socket] = field(default_factory=set)
    _down: bool = False  # stopping: connections accepted meanwhile are cut at once

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        deadline = time.monotonic() + 10
        while True:
            try:
                server = _Server((self.host, self.port), _handler(self))
                break
            except OSError:  # the old socket may linger for a moment after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._down = False
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True,
                         name=f"next-hop-{self.port}").start()
        self._server = server

    def stop(self) -> None:
        """Go down as a crashed MTA does: stop listening and cut every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self._down = True
        self._cut()
        server.shutdown()
        server.server_close()
        self._cut()

    def _cut(self) -> None:
        # Under the lock: never between keeping a message and writing its answer (an answer
        # written before the shutdown still reaches the client, ahead of the FIN).
        with self.lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # (wakes its handler thread, which ends)

    def kept(self) -> list[bytes]:
        with self.lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.kept()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def _handler(hop: NextHop) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def setup(self) -> None:
            super().setup()
            with hop.lock:
                hop.connections += 1
                hop._open.add(self.request)
            if hop._down:
                self.request.shutdown(socket.SHUT_RDWR)

        def finish(self) -> None:
            with hop.lock:
                hop._open.discard(self.request)
            with contextlib.suppress(OSError):
                super().finish()

        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")
            self.wfile.flush()

        def data(self) -> bool:
            """DATA to its answer; False when the connection is over."""
            faults = hop.faults
            if faults.data_command_delay:
                time.sleep(faults.data_command_delay)
            drop_at = None
            with hop.lock:
                if faults.drop_after is not None and faults.drops_left > 0:
                    faults.drops_left -= 1
                    drop_at = faults.drop_after
            self.reply("354 go ahead")
            lines: list[bytes] = []
            read = 0
            while True:
                line = self.rfile.readline()
                if not line:
                    return False
                read += len(line)
                if drop_at is not None and read >= drop_at:
                    with hop.lock:
                        hop.dropped += 1
                    self.request.shutdown(socket.SHUT_RDWR)
                    return False
                if line == b".\r\n":
                    break
                lines.append(line[1:] if line.startswith(b".") else line)
            if faults.end_of_data_delay:
                # Kept, then answered late. A crash in between (not done by `stop`, which
                # cannot cut a connection here) would make the sender's retry a duplicate:
                # RFC 1047, no filter can help it.
                with hop.lock:
                    hop.messages.append(b"".join(lines))
                time.sleep(faults.end_of_data_delay)
                self.reply("250 2.0.0 Ok: queued")
                return True
            with hop.lock:  # kept and answered as one step as far as `stop` is concerned
                hop.messages.append(b"".join(lines))
                self.reply("250 2.0.0 Ok: queued")
            return True

        def handle(self) -> None:
            try:
                self.converse()
            except OSError:
                return  # reset by the peer or by stop()

        def converse(self) -> None:
            if hop.faults.greeting_delay:
                time.sleep(hop.faults.greeting_delay)
            self.reply("220 next-hop.test ESMTP")
            while True:
                raw = self.rfile.readline()
                if not raw:
                    return
                verb = raw.split(b" ", 1)[0].strip().upper()
                if verb in (b"EHLO", b"LHLO"):
                    self.wfile.write(b"250-next-hop.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                     b"250-SMTPUTF8\r\n250-SIZE 200000000\r\n")
                    self.reply("250 ENHANCEDSTATUSCODES")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"XFORWARD"):
                    self.reply("250 2.0.0 Ok")
                elif verb == b"DATA":
                    if not self.data():
                        return
                elif verb == b"QUIT":
                    self.reply("221 2.0.0 Bye")
                    return
                else:
                    self.reply("502 5.5.2 unknown")

    return Handler


@contextlib.contextmanager
def next_hop() -> Iterator[NextHop]:
    hop = NextHop()
    hop.start()
    try:
        yield hop
    finally:
        hop.stop()
