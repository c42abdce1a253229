"""Scale-out through a failover: two `mailfilter serve` instances (subprocesses, settings
from MAILFILTER_* variables, as containers run them) on a Sentinel layout and on a
three-master Cluster, under a steady stream of mail, while the master holding the
deployment is SIGKILLed and its replica promoted.

What must hold: mail keeps being relayed and matched (the lists are in memory; a 4xx is
allowed only between the kill and the promotion, and senders retry it as MTAs do); a list
added right after the promotion is live on both instances within LIVE_WITHIN seconds
although `reload_interval` is a minute (so by a change notification on the promoted
server, not by polling); nothing is lost: every message accepted is at the sink or in a
quarantine, exactly once. On the cluster, every key the run wrote (imports, verdict cache,
quarantine index) is in the deployment's one slot, and the quarantine index lists what
both instances hold.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy.serving import Served, mailfilter, running, start
from factories import jpeg
from faults.client import attempt, make_message
from faults.ledger import SEQ_HEADER, Ledger, QuarantineContents, account, read_quarantine
from proxy.proxy_harness import KNOWN
from redis.crc import key_slot

from ha.instances import instance_env, store_env
from ha.servers import ClusterLayout, RedisProcess, SentinelLayout
from mailfilter.redis_connection import KeyLayout

LIVE_WITHIN = 5.0
"""Seconds from the commit of a list change (after the promotion) until both instances
serve it; the periodic reload (60 s here) would take up to a minute."""
SETTLE_AFTER_PROMOTION = 10.0
"""A 4xx later than this after the promotion is a failure (senders' retries included)."""
SECOND_KNOWN = jpeg(4343)  # a second generated stand-in, listed after the failover


@dataclass
class Traffic:
    """Senders in a thread: messages of every kind to both instances in turn, each
    retried after a 4xx (or no reply) as an MTA would; every attempt timed."""

    instances: tuple[Served, ...]
    ledger: Ledger = field(default_factory=Ledger)
    refusals: list[tuple[float, str]] = field(default_factory=list)  # (when, reply)
    kinds: tuple[str, ...] = ("text", "photo", "known", "photo")
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    extra: list[tuple[Served, bytes]] = field(default_factory=list)  # sent next, once each
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Traffic:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def accepted(self) -> int:
        return sum(1 for tries in self.ledger.snapshot().values()
                   if tries and tries[-1].accepted)

    def send_once(self, to: Served, raw_for: Callable[[str], bytes]) -> None:
        with self._lock:
            seq = self.ledger.new_seq()
        self.extra.append((to, raw_for(seq)))

    def _deliver(self, to: Served, seq: str, raw: bytes) -> None:
        for _ in range(60):
            result = attempt(to.host, to.port, raw, timeout=60)
            self.ledger.record(seq, result)
            if result.accepted or (result.code is not None and result.code >= 500):
                return
            self.refusals.append((time.monotonic(), f"{result.code} {result.reply}"))
            time.sleep(0.5)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set() or self.extra:
            if self.extra:
                to, raw = self.extra.pop(0)
                header = raw.split(f"{SEQ_HEADER}: ".encode(), 1)[1].split(b"\r\n", 1)[0]
                self._deliver(to, header.decode(), raw)
                continue
            with self._lock:
                seq = self.ledger.new_seq()
            kind = self.kinds[n % len(self.kinds)]
            self._deliver(self.instances[n % len(self.instances)], seq,
                          make_message(seq, kind, seed=n % 5))
            n += 1
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(300)
        assert not self.thread.is_alive(), "the senders did not finish"


def second_known_message(seq: str) -> bytes:
    from email.policy import SMTP

    from factories import message
    msg = message(subject=f"second {seq}", attachments=[("k2.jpg", "image/jpeg", SECOND_KNOWN)])
    msg[SEQ_HEADER] = seq
    return msg.as_bytes(policy=SMTP)


def index_version(inst: Served) -> int:
    return int(inst.value("mailfilter_index_version"))


class Published:
    """The first change PUBLISHed on the deployment's channel at one server: when an
    import committed, as instances subscribed there could see it."""

    def __init__(self, server: RedisProcess, prefix: str) -> None:
        self.client = server.client()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(KeyLayout(prefix).channel)
        self.at: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.at is None:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None and message.get("type") == "message":
                self.at = time.monotonic()

    def close(self) -> None:
        self.at = self.at or -1.0
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()


@dataclass
class Run:
    """What one failover run measured."""

    killed_at: float
    promoted_at: float
    committed_at: float
    live_after: dict[str, float]
    refusals: list[tuple[float, str]]


def run_failover(layout: SentinelLayout | ClusterLayout, prefix: str, tmp_path: Path,
                 smtp_sink: Any, kill: Callable[[], RedisProcess],
                 wait_promoted: Callable[[], None]) -> tuple[Run, list[Served]]:
    store = store_env(layout, prefix)
    known = tmp_path / "known.jpg"
    known.write_bytes(KNOWN)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    added = mailfilter("hashes", "add", "--config", str(empty), "--list", "stand-ins",
                       str(known), env=store)
    assert added.returncode == 0, added.stderr

    a = start("A", tmp_path / "a", instance_env(store, tmp_path / "a", smtp_sink.address))
    b = start("B", tmp_path / "b", instance_env(store, tmp_path / "b", smtp_sink.address))
    with running(a, b):
        traffic = Traffic((a, b)).start()
        try:
            deadline = time.monotonic() + 60
            while traffic.accepted() < 8:
                assert time.monotonic() < deadline, "no traffic before the failover"
                time.sleep(0.1)

            killed_at = time.monotonic()
            survivor = kill()
            wait_promoted()
            promoted_at = time.monotonic()

            # A list added right after the promotion, by the operator's command; when each
            # instance serves it is watched meanwhile (the command itself takes a while).
            before = {inst.name: index_version(inst) for inst in (a, b)}
            live_at: dict[str, float] = {}
            watching = threading.Event()

            def watch() -> None:
                while not watching.is_set() and len(live_at) < 2:
                    for inst in (a, b):
                        if inst.name not in live_at and index_version(inst) > before[inst.name]:
                            live_at[inst.name] = time.monotonic()
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            second = tmp_path / "second.jpg"
            second.write_bytes(SECOND_KNOWN)
            published = Published(survivor, prefix)
            try:
                added = mailfilter("hashes", "add", "--config", str(empty), "--list",
                                   "after-failover", "--json", str(second), env=store)
                assert added.returncode == 0, added.stderr
                assert _wait(lambda: published.at is not None, 5)
            finally:
                published.close()
            committed_at = published.at
            assert committed_at is not None and committed_at > 0
            _wait(lambda: len(live_at) == 2, 30)
            watching.set()
            watcher.join(5)
            live_after = {name: at - committed_at for name, at in live_at.items()}
            # the new list catches mail on both
            for inst in (a, b):
                traffic.send_once(inst, second_known_message)
            more = traffic.accepted() + 8
            deadline = time.monotonic() + 120
            while traffic.accepted() < more:
                assert time.monotonic() < deadline, "traffic stalled after the failover"
                time.sleep(0.1)
        finally:
            traffic.finish()

        held_a, held_b = read_quarantine(a.quarantine_dir), read_quarantine(b.quarantine_dir)
        result = account(traffic.ledger, [m.data for m in smtp_sink.messages],
                         QuarantineContents(held_a.messages + held_b.messages,
                                            held_a.problems + held_b.problems))
        print(f"\n{type(layout).__name__}: {result.summary()}; promoted "
              f"{promoted_at - killed_at:.2f} s after the kill; new list live "
              + ", ".join(f"on {k} {v * 1000:.0f} ms" for k, v in sorted(live_after.items()))
              + f" after its commit; {len(traffic.refusals)} 4xx")
        result.assert_exact()
        assert result.refused == 0, "a sender gave up"
        # both second stand-ins were caught by the list added after the failover
        held = [json.loads(p.read_text()) for inst in (a, b)
                for p in sorted(inst.quarantine_dir.glob("*/*.json"))]
        assert sum("after-failover" in json.dumps(r.get("matches")) for r in held) == 2
        run = Run(killed_at, promoted_at, committed_at, live_after, list(traffic.refusals))
        return run, [a, b]


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def check_run(run: Run) -> None:
    assert set(run.live_after) == {"A", "B"}, f"not live on both: {run.live_after}"
    assert max(run.live_after.values()) < LIVE_WITHIN, run.live_after
    late = [(when - run.promoted_at, reply) for when, reply in run.refusals
            if not run.killed_at <= when <= run.promoted_at + SETTLE_AFTER_PROMOTION]
    assert not late, f"4xx outside the failover: {late}"


@pytest.mark.slow  # a Sentinel layout, two instances, a failover: about 40 s
def test_two_instances_through_a_sentinel_failover(
        fresh_sentinel: SentinelLayout, prefix: str, tmp_path: Path, smtp_sink: Any) -> None:
    layout = fresh_sentinel
    survivor: list[RedisProcess] = []

    def kill() -> RedisProcess:
        _killed, new = layout.kill_master()
        survivor.append(new)
        return new

    run, _ = run_failover(layout, prefix, tmp_path, smtp_sink, kill,
                          lambda: layout.wait_promoted(survivor[0]))
    check_run(run)


@pytest.mark.slow  # a three-master cluster, two instances, a failover: about 40 s
def test_two_instances_through_a_cluster_failover(
        fresh_cluster: ClusterLayout, prefix: str, tmp_path: Path, smtp_sink: Any) -> None:
    layout = fresh_cluster
    keys = KeyLayout(prefix)
    survivor: list[RedisProcess] = []

    def kill() -> RedisProcess:
        _killed, new = layout.kill_owner(keys.version)
        survivor.append(new)
        return new

    run, (a, b) = run_failover(layout, prefix, tmp_path, smtp_sink, kill,
                               lambda: layout.wait_failed_over(keys.version, survivor[0]))
    check_run(run)

    # The quarantine index on the cluster lists what both instances hold.
    held = {p.stem for inst in (a, b) for p in inst.quarantine_dir.glob("*/*.json")}
    empty = tmp_path / "empty.toml"

    def listed() -> set[str]:
        out = mailfilter("quarantine", "list", "--json", "--config", str(empty),
                         env={**store_env(layout, prefix),
                              "MAILFILTER_QUARANTINE__PATH": str(tmp_path / "none")})
        assert out.returncode == 0, out.stderr
        return {json.loads(line)["id"] for line in out.stdout.splitlines() if line.strip()}

    assert _wait(lambda: listed() == held, 30), (listed(), held)

    # Every key the whole run wrote (imports, cache, quarantine index) is in one slot.
    written = list(layout.all_keys())
    assert written
    assert all(k.startswith(keys.tag.encode() + b":") for k in written), \
        [k for k in written if not k.startswith(keys.tag.encode())][:5]
    assert layout.keyslots(written) == {key_slot(keys.tag.encode())}
    assert any(b":cache:" in k for k in written) and keys.quarantine.encode() in written

