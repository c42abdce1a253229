"""Private `redis-server` processes for the fault and security tests, on free loopback ports
(the shared Redis at 127.0.0.1:6379 is never touched): started, killed, started again on the
same port with the same data (append-only file, fsynced always), made replicas and
promoted; and a TCP forwarder standing for the stable address (a virtual IP, HAProxy) that
deployments put in front of a primary that may fail over."""

from __future__ import annotations

import contextlib
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from conftest import free_port


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail("redis-server is not installed (CI installs it: apt-get install "
                    "redis-server)")
    return path


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=free_port)
    args: Sequence[str] = ()
    tls: bool = False  # `args` carry the TLS options; `port` is then the TLS port
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls \
            else ["--port", str(self.port)]
        return [redis_binary(), *ports, "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--protected-mode", "no", *self.args]

    def start(self, wait: bool = True) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.directory)
        log.close()
        if wait:
            self.wait_up()
        return self

    def wait_up(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: " + self.log_tail())
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                if self.tls:
                    return
                if self._pings():
                    return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on {self.port} did not come up: {self.log_tail()}")

    def _pings(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.exceptions.BusyLoadingError:
            return False
        except redis.RedisError:
            return False

    def log_tail(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           socket_connect_timeout=5)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def redis_servers() -> Iterator[list[RedisServer]]:
    """A list the test appends its servers to; every one is stopped at the end."""
    servers: list[RedisServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.kill()


def wait_replicated(primary: RedisServer, replicas: int = 1, timeout: float = 15.0) -> None:
    """Until `replicas` replicas have everything the primary has (WAIT)."""
    client = primary.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(client.execute_command("WAIT", replicas, 1000)) >= replicas:
            return
    raise TimeoutError("replica did not catch up")


# --- a stable address in front of whichever server is primary ---------------------------


class Forwarder:
    """A TCP forwarder on a fixed loopback port to `target` (changeable): what a virtual IP
    or an HAProxy with a role check is to a Redis that fails over."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        forwarder = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    upstream = socket.create_connection(("127.0.0.1", forwarder.target), 5)
                except OSError:
                    return  # the client sees the connection close, as with a dead primary
                with forwarder._lock:
                    forwarder._conns.update((self.request, upstream))
                try:
                    _pump(self.request, upstream)
                finally:
                    with forwarder._lock:
                        forwarder._conns.difference_update((self.request, upstream))
                    upstream.close()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def switch(self, target: int) -> None:
        """New connections go to `target`; open ones are cut (as a VIP move does)."""
        self.target = target
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.switch(self.target)


def _pump(a: socket.socket, b: socket.socket) -> None:
    peers = {a: b, b: a}
    while True:
        readable, _, _ = select.select(list(peers), [], [], 1.0)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                peers[sock].sendall(data)
            except OSError:
                return


# --- TLS material (openssl CLI) ---------------------------------------------------------


def make_ca(directory: Path, name: str = "mailfilter test CA") -> tuple[Path, Path]:
    """A throwaway CA: (cert, key)."""
    cert, key = directory / "ca.crt", directory / "ca.key"
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key),
              "-out", str(cert)])
    return cert, key


def issue_cert(directory: Path, ca: tuple[Path, Path], name: str,
               alt_names: str) -> tuple[Path, Path]:
    """A server certificate for `name` signed by `ca`; `alt_names` like
    "DNS:localhost,IP:127.0.0.1"."""
    cert, key, csr = (directory / f"{name}.crt", directory / f"{name}.key",
                      directory / f"{name}.csr")
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={alt_names}\n")
    _openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr)])
    _openssl(["x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
              "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert)])
    key.chmod(0o600)
    return cert, key


def _openssl(args: list[str]) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
