"""The Sentinel and Cluster layouts on real servers (conftest.py): `hashes import` and `scan`
as an operator runs them, through the sentinels and through a cluster; on the cluster the
store's commit, generation switch and reads, change notifications, the verdict cache and
the quarantine index, with every key they write in the deployment's one slot."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from factories import jpeg, message, message_bytes
from redis.crc import key_slot

from ha.servers import ClusterLayout, SentinelLayout, command
from mailfilter.actions.quarantine_index import open_index
from mailfilter.actions.records import EntrySummary
from mailfilter.matching.cache import RedisVerdictCache
from mailfilter.matching.formats import ParsedBatch
from mailfilter.matching.index import IndexEntry
from mailfilter.matching.store import batches_from_entries
from mailfilter.matching.store_redis import RedisHashStore
from mailfilter.model import ExactHashes, ImageFingerprint
from mailfilter.redis_connection import KeyLayout, redis_client
from mailfilter.settings import StoreSettings

IMAGE = jpeg(2121)  # a generated stand-in picture, listed by the tests


def store_toml(layout: SentinelLayout | ClusterLayout, prefix: str) -> str:
    if isinstance(layout, SentinelLayout):
        sentinels = ", ".join(f'"{a}"' for a in layout.sentinel_addresses)
        # The host of redis_url is not used with sentinels: only database and credentials.
        return (f'redis_url = "redis://sentinel-managed/0"\nredis_sentinels = [{sentinels}]\n'
                f'redis_sentinel_service = "{layout.service}"\nkey_prefix = "{prefix}"\n')
    return f'redis_url = "{layout.url}"\nredis_cluster = true\nkey_prefix = "{prefix}"\n'


def store_settings(layout: SentinelLayout | ClusterLayout, prefix: str) -> StoreSettings:
    if isinstance(layout, SentinelLayout):
        return StoreSettings(redis_url="redis://sentinel-managed/0",
                             redis_sentinels=tuple(layout.sentinel_addresses),
                             redis_sentinel_service=layout.service, key_prefix=prefix)
    return StoreSettings(redis_url=layout.url, redis_cluster=True, key_prefix=prefix)


def mailfilter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailfilter", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(params=["sentinel", "cluster"])
def layout(request: pytest.FixtureRequest) -> SentinelLayout | ClusterLayout:
    found: SentinelLayout | ClusterLayout = request.getfixturevalue(request.param)
    return found


def test_import_then_scan_as_an_operator_runs_them(
        layout: SentinelLayout | ClusterLayout, prefix: str, tmp_path: Path) -> None:
    config = tmp_path / "mailfilter.toml"
    config.write_text(f"[store]\n{store_toml(layout, prefix)}")
    checked = mailfilter("check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    expected = "# store: redis sentinel service" if isinstance(layout, SentinelLayout) \
        else "# store: redis cluster via redis://127.0.0.1:"
    assert expected in checked.stdout

    picture = tmp_path / "listed.jpg"
    picture.write_bytes(IMAGE)
    hashed = mailfilter("hash", "--json", str(picture))
    assert hashed.returncode == 0, hashed.stderr
    pdq = json.loads(hashed.stdout)["pdq"]
    rng = np.random.default_rng(5)
    others = ["".join(f"{b:02x}" for b in rng.integers(0, 256, 32)) for _ in range(999)]
    listing = tmp_path / "list.pdq"
    listing.write_text("".join(f"{v}\n" for v in [*others, pdq]))

    imported = mailfilter("hashes", "import", "--config", str(config), "--list", "te",
                          "--format", "pdq", str(listing))
    assert imported.returncode == 0, imported.stderr
    assert "loaded 1,000" in imported.stdout or "loaded 1000" in imported.stdout, \
        imported.stdout
    assert "no replica acknowledged" not in imported.stderr  # WAIT: on a replica too

    listed, clean = tmp_path / "listed.eml", tmp_path / "clean.eml"
    listed.write_bytes(message_bytes(message(attachments=[("a.jpg", "image/jpeg", IMAGE)])))
    clean.write_bytes(message_bytes(message(attachments=[("b.jpg", "image/jpeg", jpeg(7))])))
    scanned = mailfilter("scan", "--json", "--config", str(config), str(listed), str(clean))
    assert scanned.returncode == 1, scanned.stderr
    verdicts = {Path(r["source"]).name: r for r in map(json.loads, scanned.stdout.splitlines())}
    assert verdicts["clean.eml"]["verdict"] == "clean"
    assert verdicts["listed.eml"]["verdict"] == "match"
    [match] = verdicts["listed.eml"]["attachments"][0]["matches"]
    assert (match["list"], match["algorithm"], match["distance"]) == ("te", "pdq", 0)


def _batches(values: list[str]) -> list[ParsedBatch]:
    return list(batches_from_entries(IndexEntry("", "sha256", v, ("lbl",)) for v in values))


def test_store_cache_and_quarantine_index_on_the_cluster_stay_in_one_slot(
        cluster: ClusterLayout, prefix: str) -> None:
    settings = store_settings(cluster, prefix)
    writer, reader = RedisHashStore(settings), RedisHashStore(settings)
    keys = KeyLayout(prefix)
    try:
        assert reader.wait_for_change(0.1)  # subscribed: "maybe changed" once
        rng = np.random.default_rng(9)
        values = ["".join(f"{b:02x}" for b in rng.integers(0, 256, 32)) for _ in range(300)]

        woken = threading.Event()

        def wait() -> None:
            if reader.wait_for_change(10):
                woken.set()

        waiter = threading.Thread(target=wait)
        waiter.start()
        first = writer.import_list("l", "test", _batches(values[:200]), replace=True)
        waiter.join(15)
        assert woken.is_set(), "no change notification through the cluster"
        assert first.committed and reader.version() == first.version

        # a merge, a replacement (the generation switch), a deletion, read back each time
        merged = writer.import_list("l", "test", _batches(values[150:]))
        assert merged.committed and reader.lists()[0].total == 300
        replaced = writer.import_list("l", "test", _batches(values[:10]), replace=True)
        assert replaced.version > merged.version
        index = reader.load_index()
        assert len(index) == 10 and index.version == replaced.version
        writer.import_list("gone", "test", _batches(values[:5]), replace=True)
        assert writer.remove("gone") == 5
        assert [info.name for info in reader.lists()] == ["l"]
        assert sorted(e.value for e in reader.export("l")) == sorted(values[:10])

        cache = RedisVerdictCache(settings, namespace="ns")
        fingerprint = ImageFingerprint(
            exact=ExactHashes(md5="0" * 32, sha1="0" * 40, sha256=values[0]), width=1,
            height=1, image_format="PNG", frames=(), frame_count=1, skipped=None)
        cache.put(values[0], replaced.version, fingerprint, [])
        hit = cache.get(values[0], replaced.version)
        assert hit is not None and hit.sha256 == values[0]
        assert cache.get(values[0], replaced.version + 1) is None
        cache.close()

        index_client = open_index(settings)
        assert index_client is not None
        summaries = [EntrySummary(id=f"7AAAAAAAAAAAAAA{i}", host="mx-a") for i in range(3)]
        for summary in summaries:
            index_client.put(summary)
        assert [s.id for s in index_client.all()] == [s.id for s in summaries]
        assert index_client.replace_host("mx-a", summaries[:1]) == (1, 2)
        assert index_client.get(summaries[0].id) is not None
        index_client.close()

        written = list(cluster.all_keys(f"*{prefix}*"))
        assert written, "nothing written?"
        assert all(k.startswith(keys.tag.encode() + b":") for k in written), written[:5]
        assert cluster.keyslots(written) == {key_slot(keys.tag.encode())}
    finally:
        writer.purge()
        writer.close()
        reader.close()
    assert not list(cluster.all_keys(f"*{prefix}*"))


def test_sentinel_client_talks_to_the_master(sentinel: SentinelLayout, prefix: str) -> None:
    client = redis_client(store_settings(sentinel, prefix), socket_timeout=5)
    try:
        assert command(client, "ROLE")[0] == b"master"
        assert client.connection_pool.connection_kwargs.get("port") is None  # asked, not set
        assert sentinel.master_port() == sentinel.master.port
    finally:
        client.close()
