"""Scale-out with Redis as the shared engine: two `mailfilter serve` instances (own ports,
own quarantine directories) on one Redis. A list change made through one instance's
settings is live on the other within seconds (pub/sub), an entry quarantined by one is
listed by the other's `quarantine list`, and an attachment scanned by one is a
verdict-cache hit on the other."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from factories import jpeg, message, message_bytes
from proxy.proxy_harness import KNOWN, free_port

from deploy.serving import Served, mailfilter, purge_redis_keys, running, start, wait_until
from mailfilter.redis_connection import KeyLayout

# With pub/sub working, a change reaches every instance well within this; polling alone
# (every [store] reload_interval, 5 s here as by default) would not.
LIVE_WITHIN = 3.0


def instance_env(redis_url: str, prefix: str, directory: Path, next_hop: str
                 ) -> dict[str, str]:
    return {
        "MAILFILTER_STORE__REDIS_URL": redis_url,
        "MAILFILTER_STORE__KEY_PREFIX": prefix,
        "MAILFILTER_STORE__RELOAD_INTERVAL": "5s",
        "MAILFILTER_STORE__PATH": str(directory / "state"),
        "MAILFILTER_QUARANTINE__PATH": str(directory / "quarantine"),
        "MAILFILTER_SMTP__LISTEN": f"127.0.0.1:{free_port()}",
        "MAILFILTER_SMTP__NEXT_HOP": next_hop,
        "MAILFILTER_SMTP__HOSTNAME": f"{directory.name}.test",
        "MAILFILTER_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
        "MAILFILTER_WORKERS__PROCESSES": "1",
        "MAILFILTER_QUARANTINE__INSTANCE_NAME": f"instance-{directory.name}",
    }


@pytest.fixture
def pair(tmp_path: Path, redis_url: str, redis_prefix: str, smtp_sink: Any
         ) -> Iterator[tuple[Served, Served]]:
    a = start("A", tmp_path / "a",
              instance_env(redis_url, redis_prefix, tmp_path / "a", smtp_sink.address))
    b = start("B", tmp_path / "b",
              instance_env(redis_url, redis_prefix, tmp_path / "b", smtp_sink.address))
    try:
        with running(a, b):
            yield a, b
    finally:
        purge_redis_keys(redis_url, redis_prefix)


class ChangeListener:
    """Subscribes to the store's change channel and notes when the first change was
    published: the moment an import committed, as every instance could see it."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(KeyLayout(prefix).channel)
        self.published: float | None = None
        self.version: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None and message.get("type") == "message":
                self.published = time.monotonic()
                self.version = int(message["data"])
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()


def _with_image(subject: str, image: bytes) -> bytes:
    return message_bytes(message(subject=subject, attachments=[("p.jpg", "image/jpeg", image)]))


def test_import_on_one_instance_is_live_on_the_other_within_seconds(
        pair: tuple[Served, Served], tmp_path: Path, smtp_sink: Any, redis_url: str,
        redis_prefix: str) -> None:
    a, b = pair
    raw = _with_image("the stand-in", KNOWN)
    # Not known yet: B relays it.
    assert b.send(raw).startswith("250")
    assert len(smtp_sink.wait_for(1)) == 1 and not b.quarantined()

    image = tmp_path / "stand-in.jpg"
    image.write_bytes(KNOWN)
    listener = ChangeListener(redis_url, redis_prefix)
    try:
        added = mailfilter("hashes", "add", "--config", str(a.config), "--list", "shared",
                           "--json", str(image), env=a.env)
        assert added.returncode == 0, added.stderr
        version = json.loads(added.stdout.splitlines()[-1])["version"]
        assert wait_until(lambda: listener.published is not None, 5.0) is not None
        assert listener.version == version
        published = listener.published
    finally:
        listener.close()
    assert published is not None

    def live(inst: Served) -> bool:
        return inst.value("mailfilter_index_version") >= version

    assert wait_until(lambda: live(b), 10.0) is not None, "B never loaded the new lists"
    seconds_b = time.monotonic() - published
    assert wait_until(lambda: live(a), 10.0) is not None
    print(f"\nlist change live on B {seconds_b * 1000:.0f} ms after the commit was published "
          f"(reload_interval 5s)")
    assert seconds_b < LIVE_WITHIN, f"took {seconds_b:.2f}s: pub/sub did not wake B"

    # B now catches the image it relayed before, and quarantines it in its own directory.
    reply = b.send(raw)
    assert reply.startswith("250") and "next hop" not in reply, reply
    [record] = b.quarantined()
    assert [m["list"] for m in record["matches"]][:1] == ["shared"]  # type: ignore[index]
    assert not a.quarantined()
    assert len(smtp_sink.messages) == 1  # nothing more was relayed

    # The quarantine index is shared too: A's operator sees the entry B holds, and where.
    def listed_on_a() -> list[dict[str, Any]]:
        run = mailfilter("quarantine", "list", "--json", "--config", str(a.config), env=a.env)
        assert run.returncode == 0, run.stderr
        return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]

    assert wait_until(lambda: any(e["id"] == record["id"] for e in listed_on_a()), 10.0,
                      0.2) is not None
    [entry] = [e for e in listed_on_a() if e["id"] == record["id"]]
    assert entry["host"] == b.env["MAILFILTER_QUARANTINE__INSTANCE_NAME"]


def test_verdict_cache_is_shared_between_instances(pair: tuple[Served, Served],
                                                   smtp_sink: Any) -> None:
    a, b = pair
    raw = _with_image("a newsletter picture", jpeg(7))
    assert b.send(raw).startswith("250")
    assert b.value("mailfilter_attachments_scanned_total", cached="false") == 1
    assert a.value("mailfilter_attachments_scanned_total", cached="true") == 0
    # The same attachment on the other instance: fingerprint and matches from the cache
    # B filled, no decoding.
    assert a.send(raw).startswith("250")
    assert a.value("mailfilter_attachments_scanned_total", cached="true") == 1
    assert a.value("mailfilter_attachments_scanned_total", cached="false") == 0
    assert len(smtp_sink.wait_for(2)) == 2
