"""Redis fails under `mailfilter serve` (a subprocess, as operators run it), with its own
`redis-server` processes on free ports (append-only file, fsync always):

- down at start: no lists, so every message is refused 451 (never passed unscanned); once
  Redis is up the lists load and the senders' retries go through;
- down in the middle of traffic: the index keeps serving the last copy (a known image is
  still quarantined), the verdict cache is bypassed (images are scanned, not failed), and
  when Redis is back a new import is loaded;
- failing over behind a stable address: the primary dies, its replica is promoted, and the
  address clients use (a TCP forwarder standing for a virtual IP or HAProxy) moves to it:
  the same address, a new primary with the same data. (Failovers that mailfilter follows
  itself, through Redis Sentinel or Redis Cluster, are tested in tests/ha.)

Each ends with the accounting of every message sent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from email.policy import SMTP
from pathlib import Path

import pytest
from factories import jpeg, message
from proxy.proxy_harness import KNOWN, RecordingSink, free_port, running_sink, write_config

from faults.client import deliver, make_message
from faults.ledger import SEQ_HEADER, Ledger, account, read_quarantine
from faults.redis_server import Forwarder, RedisServer, redis_servers, wait_replicated
from faults.serve import Served, hashes_add, serving

SECOND_KNOWN = jpeg(4242)  # a second stand-in, enrolled while the test runs


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with running_sink() as s:
        yield s


def _env(url: str) -> dict[str, str]:
    return {"MAILFILTER_STORE__REDIS_URL": url, "MAILFILTER_STORE__RELOAD_INTERVAL": "0.5s",
            "MAILFILTER_STORE__KEY_PREFIX": "mf-faults"}


def _send(s: Served, ledger: Ledger, kinds: list[str], seed: int = 1) -> list[str]:
    """Each kind once, in order; photos of the same seed are the same photo."""
    seqs = []
    for kind in kinds:
        seq = ledger.new_seq()
        deliver(ledger, seq, make_message(seq, kind, seed=seed), "127.0.0.1", s.port,
                timeout=60)
        seqs.append(seq)
    return seqs


def _send_second_known(s: Served, ledger: Ledger) -> str:
    seq = ledger.new_seq()
    msg = message(subject="second", attachments=[("k2.jpg", "image/jpeg", SECOND_KNOWN)])
    msg[SEQ_HEADER] = seq
    deliver(ledger, seq, msg.as_bytes(policy=SMTP), "127.0.0.1", s.port, timeout=60)
    return seq


def _retry_refused(s: Served, ledger: Ledger, kinds: dict[str, str]) -> None:
    for seq, kind in kinds.items():
        if ledger.last(seq).refused:
            deliver(ledger, seq, make_message(seq, kind), "127.0.0.1", s.port, retries=20,
                    retry_delay=0.5, timeout=60)


def _metric(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _enroll_second(tmp_path: Path, s: Served, url: str) -> None:
    image = tmp_path / "second.jpg"
    image.write_bytes(SECOND_KNOWN)
    hashes_add(s.config, image, _env(url), list_name="more-stand-ins")


def _wait_loaded(s: Served, version_over: int = 0, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = [r for r in s.log() if r.get("msg") == "hash lists loaded"]
        if loaded and int(loaded[-1]["version"]) > version_over:
            return int(loaded[-1]["version"])
        time.sleep(0.1)
    raise TimeoutError(f"no lists newer than version {version_over} loaded")


def test_redis_down_at_start(tmp_path: Path, sink: RecordingSink) -> None:
    with redis_servers() as servers:
        r = RedisServer(tmp_path / "redis").start()
        servers.append(r)
        image = tmp_path / "known.jpg"  # enrolled while Redis is up
        image.write_bytes(KNOWN)
        hashes_add(write_config(tmp_path, sink.address, free_port(), free_port()), image,
                   _env(r.url))
        r.kill()
        with serving(tmp_path, sink.address, env=_env(r.url), enroll=False) as s:
            ledger = Ledger()
            kinds = ["text", "photo", "known", "unscannable"]
            seqs = _send(s, ledger, kinds)
            replies = [ledger.last(q).reply for q in seqs]
            assert all(x.startswith("451 4.3.0") for x in replies), replies
            assert "not loaded" in replies[0]
            r.start()
            _wait_loaded(s)
            _retry_refused(s, ledger, dict(zip(seqs, kinds, strict=True)))
            result = account(ledger, [m.data for m in sink.messages],
                             read_quarantine(s.quarantine))
            result.assert_exact()
            assert (result.delivered, result.quarantined) == (3, 1)
            assert s.terminate() == 0


@pytest.mark.slow  # Redis stopped and started under traffic: about 7 s
def test_redis_down_mid_run_and_back(tmp_path: Path, sink: RecordingSink) -> None:
    with redis_servers() as servers:
        r = RedisServer(tmp_path / "redis").start()
        servers.append(r)
        with serving(tmp_path, sink.address, env=_env(r.url)) as s:
            first = _wait_loaded(s)
            ledger = Ledger()
            _send(s, ledger, ["photo", "photo", "known", "text"], seed=7)
            metrics = s.metrics()
            assert _metric(metrics, "mailfilter_attachments_scanned_total",
                           'cached="true"') >= 1  # the same photo again: a cache hit
            assert any(k.startswith(b"{mf-faults}:cache:") for k in r.client().keys("*"))
            uncached = _metric(metrics, "mailfilter_attachments_scanned_total",
                               'cached="false"')

            r.kill()
            mark = len(s.log())
            started = time.monotonic()
            seqs = _send(s, ledger, ["photo", "known", "text", "photo"], seed=7)
            assert all(ledger.last(q).accepted for q in seqs), [ledger.last(q) for q in seqs]
            assert time.monotonic() - started < 20  # a dead cache costs no timeouts per image
            s.wait_log("hash store unavailable, serving the lists loaded before", after=mark)
            # the cache was bypassed: the photos seen before were scanned again, not failed
            assert _metric(s.metrics(), "mailfilter_attachments_scanned_total",
                           'cached="false"') >= uncached + 2

            r.start()
            s.wait_log("hash store reachable again", after=mark)
            _enroll_second(tmp_path, s, r.url)
            _wait_loaded(s, version_over=first)
            second = _send_second_known(s, ledger)
            assert ledger.last(second).accepted

            result = account(ledger, [m.data for m in sink.messages],
                             read_quarantine(s.quarantine))
            result.assert_exact()
            assert (result.delivered, result.quarantined) == (6, 3)
            assert s.terminate() == 0


@pytest.mark.slow  # two Redis servers and a failover: about 10 s
def test_redis_failover_to_a_promoted_replica(tmp_path: Path, sink: RecordingSink) -> None:
    with redis_servers() as servers:
        primary = RedisServer(tmp_path / "primary").start()
        replica = RedisServer(tmp_path / "replica",
                              args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        servers += [primary, replica]
        address = Forwarder(primary.port)
        try:
            with serving(tmp_path, sink.address, env=_env(address.url)) as s:
                first = _wait_loaded(s)
                wait_replicated(primary)
                ledger = Ledger()
                _send(s, ledger, ["photo", "known", "text"], seed=11)

                primary.kill()
                mark = len(s.log())
                # between the crash and the promotion: the last copy serves
                seqs = _send(s, ledger, ["known", "photo"], seed=11)
                assert all(ledger.last(q).accepted for q in seqs)
                s.wait_log("hash store unavailable, serving the lists loaded before",
                           after=mark)

                replica.client().execute_command("REPLICAOF", "NO", "ONE")
                address.switch(replica.port)
                s.wait_log("hash store reachable again", after=mark)
                _enroll_second(tmp_path, s, address.url)  # written to the new primary
                _wait_loaded(s, version_over=first)
                second = _send_second_known(s, ledger)
                assert ledger.last(second).accepted
                _send(s, ledger, ["photo", "text"], seed=12)

                result = account(ledger, [m.data for m in sink.messages],
                                 read_quarantine(s.quarantine))
                result.assert_exact()
                assert (result.delivered, result.quarantined) == (5, 3)
                assert s.terminate() == 0
        finally:
            address.close()
