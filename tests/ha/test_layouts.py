"""The Sentinel and Cluster layouts on real servers (conftest.py): `hashes import` and `scan`
as an operator runs them, through the sentinels and through a cluster; on the cluster the
store's commit, generation switch and reads, change notifications, the verdict cache and
the quarantine index, with every key they write in the deployment's one slot."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deploy.serving import Served, clean_environ, running, wait_until
from factories import jpeg, message, message_bytes
from proxy.proxy_harness import spawn_serve
from redis.crc import key_slot

from ha.instances import instance_env
from ha.servers import ClusterLayout, RedisProcess, SentinelLayout, command
from mailfilter.actions.quarantine_index import open_index
from mailfilter.actions.records import EntrySummary
from mailfilter.errors import TemporaryFailure
from mailfilter.matching.cache import RedisVerdictCache
from mailfilter.matching.formats import ParsedBatch
from mailfilter.matching.index import IndexEntry
from mailfilter.matching.store import batches_from_entries
from mailfilter.matching.store_redis import RedisHashStore
from mailfilter.model import ExactHashes, ImageFingerprint
from mailfilter.redis_connection import KeyLayout, redis_client
from mailfilter.settings import StoreSettings

# A Sentinel layout and a Cluster to start (about 13 s), then 8 tests of 0.1-3 s: about
# 30 s for the module.
pytestmark = pytest.mark.slow

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


# --- the ACL user of docs/scale-out.md ------------------------------------------------------

SCALE_OUT = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"
ACL_PASSWORD = "acl-test-password"


def documented_acl(prefix: str) -> list[str]:
    """The ACL SETUSER line of docs/scale-out.md as arguments, for this test's prefix."""
    [line] = [x for x in SCALE_OUT.read_text().splitlines() if x.startswith("ACL SETUSER ")]
    line = line.replace("{mailfilter}", "{" + prefix + "}").replace(">PASSWORD",
                                                                   ">" + ACL_PASSWORD)
    return line.split()[1:]


def with_user(settings: StoreSettings) -> StoreSettings:
    url = settings.redis_url.replace("redis://", f"redis://mailfilter:{ACL_PASSWORD}@", 1)
    return settings.model_copy(update={"redis_url": url})


def test_the_documented_acl_user_is_enough(layout: SentinelLayout | ClusterLayout,
                                           prefix: str, tmp_path: Path) -> None:
    servers = layout.processes if isinstance(layout, ClusterLayout) \
        else [layout.master, layout.replica]
    for server in servers:
        assert command(server.client(), "ACL", *documented_acl(prefix)) == b"OK"
    settings = with_user(store_settings(layout, prefix))

    # what the commands and the service send: imports (the commit script, WAIT), reads,
    # change notifications, a version raised after a lost commit, the cache, the index
    config = tmp_path / "mailfilter.toml"
    config.write_text(f"[store]\n{store_toml(layout, prefix)}".replace(
        "redis://", f"redis://mailfilter:{ACL_PASSWORD}@", 1))
    listing = tmp_path / "list.sha1"
    listing.write_text("".join(f"{i:040x}\n" for i in range(1, 50)))
    for args in (["hashes", "import", "--list", "acl", "--format", "sha1", str(listing)],
                 ["hashes", "stats"], ["hashes", "export", "--list", "acl"],
                 ["quarantine", "reindex"], ["quarantine", "list"]):
        out = mailfilter(*args[:2], "--config", str(config), *args[2:])
        assert out.returncode == 0, (args, out.stderr)
        assert "NOPERM" not in out.stderr and "no replica acknowledged" not in out.stderr

    watcher, writer = RedisHashStore(settings), RedisHashStore(settings)
    try:
        assert watcher.wait_for_change(0.1)
        _ = writer.import_list("acl", "t", _batches([f"{i:064x}" for i in range(1, 9)]),
                               replace=True)
        assert watcher.wait_for_change(5)
        assert writer.raise_version(writer.version() + 5) == writer.version()
        assert len(watcher.load_index()) == 8
        assert writer.remove("acl") == 8
        cache = RedisVerdictCache(settings, namespace="ns")
        fingerprint = ImageFingerprint(
            exact=ExactHashes(md5="0" * 32, sha1="0" * 40, sha256="ab" * 32), width=1,
            height=1, image_format="PNG", frames=(), frame_count=1, skipped=None)
        cache.put("ab" * 32, 1, fingerprint, [])
        assert cache.get("ab" * 32, 1) is not None
        cache.close()
        index = open_index(settings)
        assert index is not None
        index.put(EntrySummary(id="7ACL", host="mx-a"))
        assert [s.id for s in index.all()] == ["7ACL"] and index.remove(["7ACL"]) == 1
        index.close()
    finally:
        watcher.close()
        writer.close()
    # and nothing else: the user cannot reach another deployment's keys
    other = with_user(store_settings(layout, prefix + "-other"))
    refused = RedisHashStore(other)
    try:
        with pytest.raises(TemporaryFailure, match=r"NOPERM|permission"):
            refused.version()
    finally:
        refused.close()


# --- moving between layouts (docs/scale-out.md) ---------------------------------------------


def single_toml(server: RedisProcess, prefix: str) -> str:
    return f'redis_url = "redis://127.0.0.1:{server.port}/0"\nkey_prefix = "{prefix}"\n'


def listing_with(tmp_path: Path, picture: bytes) -> Path:
    """A pdq list of 200 random hashes and the PDQ of `picture`."""
    path = tmp_path / "picture.jpg"
    path.write_bytes(picture)
    hashed = mailfilter("hash", "--json", str(path))
    assert hashed.returncode == 0, hashed.stderr
    rng = np.random.default_rng(11)
    values = ["".join(f"{b:02x}" for b in rng.integers(0, 256, 32)) for _ in range(200)]
    listing = tmp_path / "list.pdq"
    listing.write_text("".join(f"{v}\n" for v in [*values, json.loads(hashed.stdout)["pdq"]]))
    return listing


def test_moving_lists_from_a_single_redis_to_a_cluster(
        sentinel: SentinelLayout, cluster: ClusterLayout, prefix: str, tmp_path: Path) -> None:
    old, new = tmp_path / "old.toml", tmp_path / "cluster.toml"
    old.write_text(f"[store]\n{single_toml(sentinel.master, prefix)}")
    new.write_text(f"[store]\n{store_toml(cluster, prefix)}[quarantine]\n"
                   f'path = "{tmp_path / "quarantine"}"\ninstance_name = "mx-a"\n')
    imported = mailfilter("hashes", "import", "--config", str(old), "--list", "ncmec",
                          "--format", "pdq", str(listing_with(tmp_path, IMAGE)))
    assert imported.returncode == 0, imported.stderr

    # the three commands of the docs, as written there
    exported = mailfilter("hashes", "export", "--config", str(old), "--list", "ncmec")
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "ncmec.jsonl").write_text(exported.stdout)
    moved = mailfilter("hashes", "import", "--config", str(new), "--list", "ncmec",
                       str(tmp_path / "ncmec.jsonl"))
    assert moved.returncode == 0, moved.stderr
    assert "now 201 entries" in moved.stdout, moved.stdout
    reindexed = mailfilter("quarantine", "reindex", "--config", str(new))
    assert reindexed.returncode == 0, reindexed.stderr

    listed = tmp_path / "listed.eml"
    listed.write_bytes(message_bytes(message(attachments=[("a.jpg", "image/jpeg", IMAGE)])))
    scanned = mailfilter("scan", "--json", "--config", str(new), str(listed))
    assert scanned.returncode == 1, scanned.stderr
    [match] = json.loads(scanned.stdout)["attachments"][0]["matches"]
    assert (match["list"], match["distance"]) == ("ncmec", 0)


def test_an_instance_moved_from_the_master_to_the_sentinels_by_sighup(
        sentinel: SentinelLayout, prefix: str, tmp_path: Path, smtp_sink: Any) -> None:
    """Single to Sentinel keeps the data where it is: the instance's settings change from
    the master's address to the sentinels, and a reload (SIGHUP) follows."""
    directory = tmp_path / "a"
    directory.mkdir()
    config = directory / "mailfilter.toml"
    config.write_text(f"[store]\n{single_toml(sentinel.master, prefix)}")
    picture = tmp_path / "known.jpg"
    picture.write_bytes(IMAGE)
    added = mailfilter("hashes", "add", "--config", str(config), "--list", "first",
                       str(picture))
    assert added.returncode == 0, added.stderr

    env = instance_env({"MAILFILTER_STORE__RELOAD_INTERVAL": "60s"}, directory,
                       smtp_sink.address)
    log_path = directory / "serve.log"
    proc = spawn_serve(config, log_path, {"MAILFILTER_LOGGING__FORMAT": "json", **env},
                       base_env=clean_environ())
    host, _, port = env["MAILFILTER_SMTP__LISTEN"].rpartition(":")
    served = Served("A", proc, env, config, host, int(port),
                    int(env["MAILFILTER_METRICS__LISTEN"].rpartition(":")[2]),
                    Path(env["MAILFILTER_QUARANTINE__PATH"]), log_path)
    with running(served):
        assert served.value("mailfilter_index_version") == 1
        config.write_text(f"[store]\n{store_toml(sentinel, prefix)}")
        served.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: any(r.get("msg") == "settings reloaded"
                                      for r in served.log()), 20) is not None
        second = tmp_path / "second.jpg"
        second.write_bytes(jpeg(77))
        added = mailfilter("hashes", "add", "--config", str(config), "--list", "second",
                           "--json", str(second))
        assert added.returncode == 0, added.stderr
        version = json.loads(added.stdout.splitlines()[-1])["version"]
        # by the notification of the store reached through the sentinels
        assert wait_until(lambda: served.value("mailfilter_index_version") >= version,
                          5.0) is not None
        reloaded = [r for r in served.log() if r.get("msg") == "hash lists loaded"]
        assert int(str(reloaded[-1]["entries"])) > int(str(reloaded[0]["entries"]))
