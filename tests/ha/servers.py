"""Redis high-availability layouts made of real `redis-server` processes on free loopback
ports, each server in a directory of its own: a master with a replica watched by three
sentinels, and a cluster of three masters with a replica each. Used by the fixtures of
tests/ha and by `bench/import_speed.py --cluster`; needs nothing from pytest.

The shared Redis at 127.0.0.1:6379 is never one of them. Every wait polls the servers for
the state it waits for (never sleep-and-hope); `stop()` kills every process started,
whatever state it is in.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import redis
from redis.crc import key_slot

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from ports import free_port  # noqa: E402

__all__ = ["ClusterLayout", "RedisProcess", "SentinelLayout", "Tls", "poll"]

SERVICE = "mailfilter-ha"
DOWN_AFTER_MS = 1000
"""Sentinel: a master not answering this long is down (subjectively; two agree: objectively)."""
FAILOVER_TIMEOUT_MS = 3000
CLUSTER_NODE_TIMEOUT_MS = 1000
"""Cluster: a master unreachable this long is failed over to its replica."""


def poll(predicate: Callable[[], object], timeout: float, what: str,
         step: float = 0.05) -> None:
    """Until `predicate()` is true (errors count as not yet); TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (waited {timeout:.0f} s)")
        time.sleep(step)


def command(client: redis.Redis, *args: object) -> Any:
    """One raw command (ROLE, CLUSTER ..., WAIT): redis-py types none of these."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return path


@dataclass
class RedisProcess:
    """One `redis-server` (or sentinel) process."""

    directory: Path
    args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    config: Path | None = None  # a config file given first (sentinels need one they rewrite)
    sentinel: bool = False
    tls: bool = False  # `args` carry the TLS options; `port` is then the TLS port
    # how the layout's own checks connect (a TLS CA, a password)
    client_options: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        head = [server_binary()]
        if self.config is not None:
            head.append(str(self.config))
        if self.sentinel:
            head.append("--sentinel")
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls \
            else ["--port", str(self.port)]
        return [*head, *ports, "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--protected-mode", "no", *self.args]

    def start(self) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.directory)
        return self

    def wait_up(self, timeout: float = 15.0) -> None:
        def answers() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited: {self.log_tail()}")
            return bool(self.client().ping())
        poll(answers, timeout, f"redis-server on {self.port} did not answer PING")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           socket_connect_timeout=2, **self.client_options)

    def log_tail(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: gone mid-whatever, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


class _Layout:
    processes: list[RedisProcess]

    def stop(self) -> None:
        for process in self.processes:
            process.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Tls:
    """A server certificate (for 127.0.0.1) and the CA it chains to."""

    ca: Path
    cert: Path
    key: Path

    def server_args(self) -> list[str]:
        return ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
                "--tls-replication", "yes"]

    def client_options(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca), "ssl_cert_reqs": "required",
                "ssl_check_hostname": True}


class SentinelLayout(_Layout):
    """A master, one replica, three sentinels (quorum 2) monitoring them as `SERVICE`;
    with `tls` every one of them speaks only TLS (replication and sentinels' links too),
    with `sentinel_password` the sentinels want it (and give it to each other)."""

    def __init__(self, root: Path, service: str = SERVICE, tls: Tls | None = None,
                 sentinel_password: str = "") -> None:
        self.root = root
        self.service = service
        self.sentinel_password = sentinel_password
        data = ["--save", "", "--appendonly", "no", *(tls.server_args() if tls else [])]
        options = tls.client_options() if tls else {}
        self.master = RedisProcess(root / "master", data, tls=tls is not None,
                                   client_options=options)
        self.replica = RedisProcess(root / "replica", data, tls=tls is not None,
                                    client_options=options)
        password = {"password": sentinel_password} if sentinel_password else {}
        self.sentinels = [
            RedisProcess(root / f"sentinel-{i}", [*(tls.server_args() if tls else []),
                                                   *(["--requirepass", sentinel_password]
                                                     if sentinel_password else [])],
                         sentinel=True, tls=tls is not None,
                         client_options={**options, **password})
            for i in range(3)]
        self.processes = [self.master, self.replica, *self.sentinels]

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def start(self) -> SentinelLayout:
        try:
            self.master.start().wait_up()
            self.replica.args = [*self.replica.args, "--replicaof", "127.0.0.1",
                                 str(self.master.port)]
            self.replica.start().wait_up()
            poll(lambda: self.replica.client().info("replication")["master_link_status"]
                 == "up", 15, "the replica did not sync with the master")
            for sentinel in self.sentinels:
                sentinel.directory.mkdir(parents=True, exist_ok=True)
                sentinel.config = sentinel.directory / "sentinel.conf"
                sentinel.config.write_text(
                    f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                    f"sentinel down-after-milliseconds {self.service} {DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {self.service} {FAILOVER_TIMEOUT_MS}\n"
                    f"sentinel parallel-syncs {self.service} 1\n"
                    + (f"sentinel sentinel-pass {self.sentinel_password}\n"
                       if self.sentinel_password else ""))
                sentinel.start().wait_up()
            poll(self._sentinels_agree, 30,
                 "the sentinels did not find the replica and each other")
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            state: dict[str, Any] = command(sentinel.client(), "SENTINEL MASTER",
                                            self.service)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def master_port(self) -> int:
        """The master's port as the sentinels (a majority of those alive) say."""
        answers = []
        for sentinel in self.sentinels:
            if sentinel.alive:
                with contextlib.suppress(redis.RedisError):
                    answers.append(self._master_port_by(sentinel))
        return max(set(answers), key=answers.count)

    def _master_port_by(self, sentinel: RedisProcess) -> int:
        _host, port = command(sentinel.client(), "SENTINEL GET-MASTER-ADDR-BY-NAME",
                              self.service)
        return int(port)

    def process_on(self, port: int) -> RedisProcess:
        return next(p for p in (self.master, self.replica) if p.port == port)

    def kill_master(self) -> tuple[RedisProcess, RedisProcess]:
        """SIGKILL the current master; return (killed, the replica that will take over)."""
        killed = self.process_on(self.master_port())
        survivor = self.replica if killed is self.master else self.master
        killed.kill()
        return killed, survivor

    def wait_promoted(self, survivor: RedisProcess, timeout: float = 30.0) -> None:
        """Until every sentinel names `survivor` as master and it says it is one."""
        def promoted() -> bool:
            if command(survivor.client(), "ROLE")[0] != b"master":
                return False
            return all(self._master_port_by(s) == survivor.port
                       for s in self.sentinels if s.alive)
        poll(promoted, timeout, f"the sentinels did not promote the server on {survivor.port}")


class ClusterLayout(_Layout):
    """Three masters with one replica each (`redis-cli --cluster create --cluster-replicas
    1`), node timeout CLUSTER_NODE_TIMEOUT_MS."""

    def __init__(self, root: Path, masters: int = 3, extra_args: Sequence[str] = ()) -> None:
        self.root = root
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                # a replica takes over however long it was cut off from its master
                "--cluster-replica-validity-factor", "0",
                "--save", "", "--appendonly", "no", *extra_args]
        # The cluster bus listens on a port of its own, by default the client port +
        # 10000: that can fall in the ephemeral range (tests/ports.py), so it is chosen
        # from the free ports too.
        self.processes = [RedisProcess(root / f"node-{i}",
                                       [*args, "--cluster-port", str(free_port())])
                          for i in range(2 * masters)]
        self.masters = masters

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.processes[0].port}/0"

    @property
    def other_nodes(self) -> list[str]:
        """host:port of every node but the URL's (`[store] redis_cluster_nodes`)."""
        return [f"127.0.0.1:{n.port}" for n in self.processes[1:]]

    def start(self) -> ClusterLayout:
        try:
            for node in self.processes:
                node.start()
            for node in self.processes:
                node.wait_up()
            create = subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *(f"127.0.0.1:{n.port}" for n in self.processes),
                 "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True, text=True, timeout=120)
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-2000:]}"
                                   f"{create.stderr[-2000:]}")
            poll(self._settled, 60, "the cluster did not settle (state ok, replicas synced)")
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> list[RedisProcess]:
        return [n for n in self.processes if n.alive]

    def _settled(self) -> bool:
        """Every live node says the cluster is ok and knows the same masters, and each
        master with a live replica has it in sync."""
        for node in self._alive():
            info = command(node.client(), "CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info:
                return False
        masters = [n for n in self._alive()
                   if command(n.client(), "ROLE")[0] == b"master"]
        if len(masters) != self.masters:
            return False
        for node in self._alive():
            role = command(node.client(), "ROLE")
            if role[0] == b"slave" and role[3] != b"connected":
                return False
        return True

    def owner(self, key: str) -> RedisProcess:
        """The live master that serves `key`'s slot."""
        slot = key_slot(key.encode())
        for node in self._alive():
            for start, end, master, *_ in command(node.client(), "CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.processes if n.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        node_id = command(master.client(), "CLUSTER", "MYID").decode()
        for node in self._alive():
            role = command(node.client(), "ROLE")
            if role[0] == b"slave" and int(role[2]) == master.port:
                return node
        raise LookupError(f"master {master.port} ({node_id}) has no live replica")

    def kill_owner(self, key: str) -> tuple[RedisProcess, RedisProcess]:
        """SIGKILL the master of `key`'s slot; return (killed, its replica)."""
        killed = self.owner(key)
        replica = self.replica_of(killed)
        killed.kill()
        return killed, replica

    def wait_failed_over(self, key: str, replica: RedisProcess, timeout: float = 30.0) -> None:
        """Until `replica` is master of `key`'s slot and the cluster is ok again."""
        def taken_over() -> bool:
            if command(replica.client(), "ROLE")[0] != b"master":
                return False
            if self.owner(key).port != replica.port:
                return False
            return all("cluster_state:ok" in command(n.client(),
                "CLUSTER", "INFO").decode() for n in self._alive())
        poll(taken_over, timeout, f"the replica on {replica.port} did not take over")

    def keyslots(self, keys: Sequence[bytes]) -> set[int]:
        """CLUSTER KEYSLOT of each key, as the server computes it."""
        client = self._alive()[0].client()
        return {int(command(client, "CLUSTER", "KEYSLOT", k)) for k in keys}

    def all_keys(self, pattern: str = "*") -> Iterator[bytes]:
        """Every key on every live master."""
        for node in self._alive():
            client = node.client()
            if command(client, "ROLE")[0] == b"master":
                yield from client.scan_iter(match=pattern, count=1000)
