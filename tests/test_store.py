"""The hash store, both backends: imports, merges, tombstones, atomicity, versions, the
cold load into the index, change notification and LiveIndex through store outages.

Redis tests use the shared Redis with a key prefix of their own (and delete only its
keys); the outage tests start a redis-server of their own on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import REPO, free_port
from redis.crc import key_slot
from test_formats import pdq_like, random_hex

from mailfilter.errors import TemporaryFailure
from mailfilter.matching import store as store_module
from mailfilter.matching.backends import open_store
from mailfilter.matching.formats import ParsedBatch, parse_stream
from mailfilter.matching.index import IndexEntry
from mailfilter.matching.live import LiveIndex, watch_version
from mailfilter.matching.store import (
    BaseHashStore,
    UnknownList,
    batches_from_entries,
)
from mailfilter.matching.store_local import DB_NAME, LocalHashStore
from mailfilter.matching.store_redis import RedisHashStore
from mailfilter.redis_connection import KeyLayout
from mailfilter.settings import StoreSettings, redact_url

# --- fixtures and helpers --------------------------------------------------------------------


def purge_redis(settings: StoreSettings) -> None:
    with RedisHashStore(settings) as st:
        st.purge()


@pytest.fixture(params=["local", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str,
             redis_prefix: str) -> Iterator[StoreSettings]:
    if request.param == "local":
        yield StoreSettings(path=tmp_path / "store", reload_interval=0.5)
        return
    s = StoreSettings(redis_url=redis_url, key_prefix=redis_prefix, reload_interval=0.5)
    try:
        yield s
    finally:
        purge_redis(s)


@pytest.fixture
def store(settings: StoreSettings) -> Iterator[BaseHashStore]:
    with open_store(settings) as st:
        yield st


def batches(values: Iterable[str], algorithm: str = "pdq",
            labels: tuple[str, ...] = ()) -> Iterator[ParsedBatch]:
    return batches_from_entries(IndexEntry("", algorithm, v, labels) for v in values)


def list_size(index_stats: dict[str, int], name: str) -> int:
    return index_stats.get(f"list:{name}", 0)


# --- imports, merges, exports ----------------------------------------------------------------


def test_import_replace_merge_and_export(store: BaseHashStore) -> None:
    a = [pdq_like() for _ in range(50)]
    b = [pdq_like() for _ in range(30)]
    r1 = store.import_list("l", "a.txt (pdq)", batches(a, labels=("x",)), replace=True)
    assert r1.committed and r1.totals == {"pdq": 50} and r1.version == 1
    r2 = store.import_list("l", "b.txt (pdq)", batches(b + a[:10], labels=("y",)))
    assert r2.committed and r2.totals == {"pdq": 80} and r2.duplicates == 10
    assert r2.version == 2 and store.version() == 2
    exported = {e.value: e for e in store.export("l")}
    assert set(exported) == set(a) | set(b)
    assert exported[a[0]].labels == ("x", "y")  # duplicates merged: labels united
    assert exported[a[20]].labels == ("x",)
    assert exported[b[0]].labels == ("y",)
    assert all(e.added > 0 for e in exported.values())
    r3 = store.import_list("l", "b.txt (pdq)", batches(b), replace=True)
    assert r3.totals == {"pdq": 30}
    assert {e.value for e in store.export()} == set(b)
    info = store.lists()[0]
    assert (info.name, info.source, info.total) == ("l", "b.txt (pdq)", 30)


def test_export_import_round_trip(store: BaseHashStore) -> None:
    store.import_list("one", "s", batches([pdq_like() for _ in range(20)], labels=("a", "b")))
    store.import_list("one", "s", batches([random_hex(16) for _ in range(5)], "md5"))
    store.import_list("two", "s", batches([random_hex(32) for _ in range(7)], "sha256"))
    lines = "".join(
        __import__("json").dumps(e.to_json()) + "\n" for e in store.export("one")
    ).encode()
    import io

    store.import_list("copy", "export", parse_stream(io.BytesIO(lines), "jsonl"))
    original = {(e.algorithm, e.value, e.labels, e.added) for e in store.export("one")}
    copied = {(e.algorithm, e.value, e.labels, e.added) for e in store.export("copy")}
    assert original == copied and len(original) == 25
    assert {i.name: i.total for i in store.lists()} == {"one": 25, "two": 7, "copy": 25}


def test_tombstones_remove_entries_when_merging(store: BaseHashStore) -> None:
    md5s = [random_hex(16) for _ in range(4)]
    store.import_list("ncmec", "first", batches(md5s, "md5"))
    doc = (
        "<queryResult><images>"
        f"<image><id>9</id><fingerprints><md5>{random_hex(16)}</md5></fingerprints></image>"
        f"<deletedImage><id>1</id><fingerprints><md5>{md5s[0]}</md5></fingerprints>"
        "</deletedImage>"
        "</images></queryResult>"
    )
    import io

    report = store.import_list("ncmec", "delta", parse_stream(io.BytesIO(doc.encode()),
                                                              "ncmec-xml"))
    assert report.committed and report.tombstones == 1 and report.removed == 1
    values = {e.value for e in store.export("ncmec")}
    assert md5s[0] not in values and set(md5s[1:]) <= values and len(values) == 4


def test_nothing_loaded_leaves_the_list_alone(store: BaseHashStore) -> None:
    store.import_list("l", "s", batches([pdq_like() for _ in range(5)]), replace=True)
    import io

    report = store.import_list("l", "junk", parse_stream(io.BytesIO(b"junk\n"), "pdq"),
                               replace=True)
    assert not report.committed and report.not_committed == "nothing could be loaded"
    assert report.totals == {"pdq": 5} and store.version() == 1
    assert report.skipped == {"bad pdq value (expected 64 hex digits)": 1}


def test_unchanged_import_does_not_bump_the_version(store: BaseHashStore) -> None:
    values = [pdq_like() for _ in range(10)]
    store.import_list("l", "s", batches(values), replace=True)
    again = store.import_list("l", "s", batches(reversed(values)), replace=True)
    merged = store.import_list("l", "s", batches(values[:3]))
    assert not again.committed and not merged.committed
    assert again.not_committed is not None and "unchanged" in again.not_committed
    assert store.version() == 1
    relabelled = store.import_list("l", "s", batches(values[:1], labels=("new",)))
    assert relabelled.committed and store.version() == 2


def test_remove_lists_and_entries(store: BaseHashStore) -> None:
    values = [random_hex(20) for _ in range(6)]
    store.import_list("l", "s", batches(values, "sha1"))
    assert store.remove("l", [("sha1", values[0]), ("sha1", random_hex(20))]) == 1
    assert store.lists()[0].counts == {"sha1": 5}
    assert store.remove("l") == 5
    assert store.lists() == () and store.version() == 3
    with pytest.raises(UnknownList):
        store.remove("l")
    with pytest.raises(UnknownList):
        list(store.export("l"))


def test_bad_list_names_are_refused(store: BaseHashStore) -> None:
    from mailfilter.errors import ConfigError

    for name in ("", " x", "a\nb", "x" * 201):
        with pytest.raises(ConfigError):
            store.import_list(name, "s", batches([pdq_like()]))


# --- the index -------------------------------------------------------------------------------


def test_load_index_matches_every_algorithm(store: BaseHashStore) -> None:
    from mailfilter.hashing.gridhist import HASH_BYTES

    p, m, s1, s256 = pdq_like(), random_hex(16), random_hex(20), random_hex(32)
    g = random_hex(HASH_BYTES)
    store.import_list("te", "s", batches([p], labels=("photo",)))
    store.import_list("te", "s", batches([m], "md5", labels=("x",)))
    store.import_list("own", "s", batches([p], labels=("mine",)))
    store.import_list("own", "s", batches([s1], "sha1"))
    store.import_list("own", "s", batches([s256], "sha256"))
    store.import_list("own", "s", batches([g], "gridhist"))
    index = store.load_index()
    assert index.version == store.version() == 6
    flipped = f"{int(p, 16) ^ 0b1011:064x}"  # 3 bits away
    found = {(mt.list_name, mt.distance, mt.labels) for mt in index.search_pdq([flipped], 31)}
    assert found == {("te", 3, ("photo",)), ("own", 3, ("mine",))}
    assert [(mt.list_name, mt.labels) for mt in index.lookup_exact("md5", m)] == [("te", ("x",))]
    assert [mt.list_name for mt in index.lookup_exact("sha1", s1)] == ["own"]
    assert [mt.list_name for mt in index.lookup_exact("sha256", s256)] == ["own"]
    assert [mt.list_name for mt in index.search_gridhist(g, 0.0)] == ["own"]
    stats = index.stats()
    assert list_size(stats, "te") == 2 and list_size(stats, "own") == 4


def test_empty_store_loads_an_empty_index(store: BaseHashStore) -> None:
    index = store.load_index()
    assert len(index) == 0 and index.version == 0


# --- atomicity and concurrency ---------------------------------------------------------------


def test_replace_is_atomic_for_concurrent_readers(settings: StoreSettings,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks: a list is many keys/rows, so a torn read would show.
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 32 * 64)
    small = [pdq_like() for _ in range(1000)]
    large = [pdq_like() for _ in range(2500)]
    # With Redis, a tiny grace period also exercises the readers' retry.
    writer: BaseHashStore = (
        RedisHashStore(settings, grace=0.05) if settings.redis_url else open_store(settings)
    )
    writer.import_list("l", "s", batches(small), replace=True)
    seen: set[int] = set()
    loads = 0
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        nonlocal loads
        with open_store(settings) as st:
            while not stop.is_set():
                try:
                    seen.add(list_size(st.load_index().stats(), "l"))
                    seen.add(st.lists()[0].total)
                    loads += 1
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        # At least 8 replacements, and on until the readers have loaded a few times while
        # they go on (a loaded machine can run all 8 before a reader's first load ends).
        give_up = time.monotonic() + 60
        i = 0
        while i < 8 or (loads < 4 and time.monotonic() < give_up):
            writer.import_list("l", "s", batches(large if i % 2 == 0 else small), replace=True)
            i += 1
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        writer.close()
    assert not errors, errors
    assert loads > 0
    assert seen <= {1000, 2500}, seen


def test_concurrent_merges_lose_nothing(settings: StoreSettings) -> None:
    groups = [[random_hex(16) for _ in range(100)] for _ in range(4)]
    errors: list[BaseException] = []

    def add(values: list[str]) -> None:
        try:
            with open_store(settings) as st:
                for start in range(0, len(values), 25):
                    st.import_list("l", "s", batches(values[start:start + 25], "md5"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with open_store(settings) as st:
        assert {e.value for e in st.export("l")} == {v for g in groups for v in g}
        assert st.version() == 16


# --- change notification and LiveIndex -------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_live_index_reloads_on_notification(settings: StoreSettings) -> None:
    writer = open_store(settings)
    writer.import_list("l", "s", batches([pdq_like() for _ in range(10)]), replace=True)
    # A poll interval far beyond the test: only the change notification can be in time.
    live = LiveIndex(open_store(settings), reload_interval=60.0)
    await live.start(wait=10)
    try:
        assert live.version == 1 and list_size(live.current().stats(), "l") == 10
        before = live.current()
        started = time.monotonic()
        report = await asyncio.to_thread(
            writer.import_list, "l", "s", batches([pdq_like() for _ in range(20)]), replace=True
        )
        await wait_until(lambda: live.version == report.version, timeout=5.0)
        assert time.monotonic() - started < 5.0
        assert list_size(live.current().stats(), "l") == 20
        assert list_size(before.stats(), "l") == 10  # the old index object is untouched
        assert not live.stale and live.last_error is None
    finally:
        await live.stop()
        writer.close()


def test_wait_for_change(settings: StoreSettings) -> None:
    with open_store(settings) as watcher, open_store(settings) as writer:
        watcher.wait_for_change(0)  # subscribe / take the baseline
        started = time.monotonic()
        assert watcher.wait_for_change(0.3) is False
        assert 0.25 <= time.monotonic() - started < 2
        timer = threading.Timer(0.2, lambda: writer.import_list("l", "s", batches([pdq_like()])))
        timer.start()
        started = time.monotonic()
        assert watcher.wait_for_change(10) is True
        assert time.monotonic() - started < 3
        timer.join()


async def test_watch_version_yields_changes(settings: StoreSettings) -> None:
    writer = open_store(settings)
    reader = open_store(settings)
    seen: list[int] = []

    async def follow() -> None:
        async for version in watch_version(reader, 60.0):
            seen.append(version)
            if len(seen) == 3:
                return

    task = asyncio.create_task(follow())
    await wait_until(lambda: seen == [0])
    for _ in range(2):
        await asyncio.to_thread(writer.import_list, "l", "s", batches([pdq_like()]))
        await wait_until(lambda: seen[-1] == writer.version())
    await asyncio.wait_for(task, 5)
    assert seen == [0, 1, 2]
    writer.close()
    reader.close()


# --- a redis-server of our own: outages, restarts, auth, unix sockets ------------------------


@dataclass
class OwnRedis:
    """A redis-server started by the test on a free port, with AOF so a restart keeps
    the data (unless wiped)."""

    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mfr")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--save", "", "--appendonly", "yes", "--appendfsync",
             "always", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(unix_socket_path=str(self.socket),
                                     password=self._password(), socket_timeout=1)
                if client.ping():
                    client.close()
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("own redis-server did not start")
            time.sleep(0.05)

    def _password(self) -> str | None:
        if "--requirepass" in self.args:
            return self.args[self.args.index("--requirepass") + 1]
        return None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients (AOF with fsync always keeps the data)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def wipe(self) -> None:
        for child in self.directory.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            elif child.name != "redis.sock":
                child.unlink()


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


async def test_live_index_serves_last_copy_while_redis_is_down(own_redis: OwnRedis) -> None:
    settings = StoreSettings(redis_url=own_redis.url, key_prefix="mf", reload_interval=0.2)
    with open_store(settings) as writer:
        writer.import_list("l", "s", batches([pdq_like() for _ in range(40)]), replace=True)
    live = LiveIndex(open_store(settings), reload_interval=0.2)
    await live.start(wait=10)
    try:
        loaded = live.current()
        assert loaded.version == 1 and not live.stale

        own_redis.kill()
        await wait_until(lambda: live.stale, timeout=10)
        assert live.current() is loaded  # still serving the last copy
        assert live.last_error and "redis" in live.last_error.lower()

        own_redis.start()  # AOF brings the lists back: the same version, no reload
        await wait_until(lambda: not live.stale, timeout=10)
        assert live.current() is loaded and live.last_error is None

        own_redis.stop()
        own_redis.wipe()
        own_redis.start()  # back, but empty: refused, the loaded lists stay
        await wait_until(lambda: bool(live.last_error and "version 0" in live.last_error),
                         timeout=10)
        assert live.stale and live.current() is loaded and len(loaded) == 40
    finally:
        await live.stop()


async def test_live_index_without_any_store_reports_not_loaded(tmp_path: Path) -> None:
    settings = StoreSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0", key_prefix="x",
                             reload_interval=0.2)
    live = LiveIndex(open_store(settings), reload_interval=0.2)
    await live.start(wait=10)
    try:
        assert live.stale and not live.loaded
        with pytest.raises(TemporaryFailure):
            live.current()
    finally:
        await live.stop()


def test_unreachable_redis_is_a_temporary_failure() -> None:
    settings = StoreSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with open_store(settings) as st:
        started = time.monotonic()
        with pytest.raises(TemporaryFailure) as caught:
            st.stats()
        assert caught.value.reason == "store-unavailable"
        assert time.monotonic() - started < 5


def test_password_and_unix_socket_urls() -> None:
    server = OwnRedis(args=["--requirepass", "s3cret"])
    server.start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        with open_store(StoreSettings(redis_url=url, key_prefix="p")) as st:
            st.import_list("l", "s", batches([pdq_like()]))
            assert st.stats().location == f"redis://:***@127.0.0.1:{server.port}/0"
        with open_store(StoreSettings(redis_url=f"unix://{server.socket}?password=s3cret",
                                      key_prefix="p")) as st:
            assert st.lists()[0].total == 1
        with (open_store(StoreSettings(redis_url=server.url, key_prefix="p")) as st,
              pytest.raises(TemporaryFailure)):
            st.lists()
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
    assert redact_url("rediss://user:pw@h:6380/1") == "rediss://user:***@h:6380/1"


# --- Redis specifics -------------------------------------------------------------------------


def test_redis_keys_share_one_hash_tag(redis_url: str, redis_prefix: str) -> None:
    settings = StoreSettings(redis_url=redis_url, key_prefix=redis_prefix)
    try:
        with open_store(settings) as st:
            st.import_list("l", "s", batches([pdq_like() for _ in range(5)]))
            st.import_list("m", "s", batches([random_hex(16)], "md5"))
        client = redis.Redis.from_url(redis_url)
        tag = KeyLayout(redis_prefix).tag
        assert tag == "{" + redis_prefix + "}"
        keys = list(client.scan_iter(match=tag + "*"))
        assert len(keys) > 8
        assert {key_slot(k) for k in keys} == {key_slot(tag.encode())}
        client.close()
    finally:
        purge_redis(settings)
    assert KeyLayout("app{tenant1}").tag == "app{tenant1}"


def test_redis_failed_commit_leaves_no_keys_behind(redis_url: str, redis_prefix: str) -> None:
    settings = StoreSettings(redis_url=redis_url, key_prefix=redis_prefix)
    try:
        with RedisHashStore(settings) as st:
            st.import_list("l", "s", batches([pdq_like() for _ in range(5)]))
            before = set(st.client.scan_iter(match=st.keys.tag + "*"))

            def broken(*_: object, **__: object) -> None:
                raise redis.ConnectionError("connection lost during commit")

            st._commit = broken  # type: ignore[assignment]
            with pytest.raises(TemporaryFailure):
                st.import_list("l", "s", batches([pdq_like() for _ in range(5)]))
            after = set(st.client.scan_iter(match=st.keys.tag + "*"))
            assert after - before == set()  # only the generation counter moved
            assert st.lists()[0].total == 5 and st.version() == 1
    finally:
        purge_redis(settings)


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from mailfilter.matching import store as store_module
    from mailfilter.matching.backends import open_store
    from mailfilter.matching.store import batches_from_entries
    from mailfilter.matching.index import IndexEntry
    from mailfilter.settings import StoreSettings

    settings = StoreSettings.model_validate_json(sys.argv[1])
    real = store_module.encode_chunks

    def dying(meta, data):
        for n, chunk in enumerate(real(meta, data)):
            if n == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash half way through the write
            yield chunk

    store_module.encode_chunks = dying
    import mailfilter.matching.store_redis as r, mailfilter.matching.store_local as l
    r.encode_chunks = dying
    l.encode_chunks = dying
    rng = np.random.default_rng(1)
    values = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(5000)]
    st = open_store(settings)
    st.import_list("l", "crash", batches_from_entries(IndexEntry("", "pdq", v) for v in values),
                   replace=True)
""")


def test_crash_during_import_keeps_the_old_list(settings: StoreSettings) -> None:
    with open_store(settings) as st:
        st.import_list("l", "good", batches([pdq_like() for _ in range(7)]), replace=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    small_chunks = settings.model_dump_json()
    proc = subprocess.run(
        [sys.executable, "-c",
         "import mailfilter.matching.store as s, mailfilter.matching.store_redis as r\n"
         "s.CHUNK_BYTES = 32 * 100  # many chunks\n"
         "r.PIPELINE_BYTES = 1  # each chunk sent at once\n" + CRASH_SCRIPT,
         small_chunks],
        env=env, capture_output=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with open_store(settings) as st:
        info = st.lists()[0]
        assert (info.source, info.total) == ("good", 7) and st.version() == 1
        assert len(st.load_index()) == 7
        if isinstance(st, RedisHashStore):
            # the dead import's keys expire by themselves
            orphans = [k for k in st.client.scan_iter(match=st.keys.tag + ":list:*")
                       if st.client.pttl(k) > 0 and b":list:1:" not in k]
            assert orphans
            assert all(0 < st.client.pttl(k) <= st.building_ttl_ms for k in orphans)
        else:
            conn = __import__("sqlite3").connect(st.db_path)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()


# --- local specifics -------------------------------------------------------------------------


def test_local_store_survives_reopen_and_is_private(tmp_path: Path) -> None:
    settings = StoreSettings(path=tmp_path / "state" / "store")
    values = [pdq_like() for _ in range(12)]
    with open_store(settings) as st:
        assert isinstance(st, LocalHashStore)
        st.import_list("l", "s", batches(values, labels=("k",)))
    assert (tmp_path / "state" / "store").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "store" / DB_NAME).stat().st_mode & 0o777 == 0o600
    with open_store(settings) as st:
        assert st.version() == 1
        assert {(e.value, e.labels) for e in st.export()} == {(v, ("k",)) for v in values}


def test_local_store_sees_other_processes_changes(tmp_path: Path) -> None:
    settings = StoreSettings(path=tmp_path / "store")
    with open_store(settings) as watcher:
        assert watcher.version() == 0
        watcher.wait_for_change(0)  # take the baseline
        env = dict(os.environ, PYTHONPATH=str(REPO))
        script = textwrap.dedent(f"""
            from mailfilter.matching.backends import open_store
            from mailfilter.matching.store import batches_from_entries
            from mailfilter.matching.index import IndexEntry
            from mailfilter.settings import StoreSettings
            st = open_store(StoreSettings(path={str(settings.path)!r}))
            entry = IndexEntry("", "md5", "{random_hex(16)}")
            st.import_list("l", "s", batches_from_entries([entry]))
        """)
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
        assert watcher.wait_for_change(5.0)
        assert watcher.version() == 1 and watcher.lists()[0].total == 1


def test_unwritable_local_path_is_a_config_error(tmp_path: Path) -> None:
    from mailfilter.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"\[store\] path"):
        open_store(StoreSettings(path=blocker / "store"))


def test_open_store_picks_the_backend(tmp_path: Path, redis_url: str) -> None:
    with open_store(StoreSettings(path=tmp_path / "s")) as st:
        assert st.backend == "local"
    with open_store(StoreSettings(redis_url=redis_url, key_prefix="mftest:never-written")) as st:
        assert st.backend == "redis"


def test_old_gridhist_width_is_left_out_of_the_index(store: BaseHashStore) -> None:
    from mailfilter.hashing.gridhist import HASH_BYTES
    from mailfilter.matching.store import Columns, ListData

    old_width = HASH_BYTES - 16  # values written by an earlier gridhist format
    data = ListData(labels=[()], columns={
        "gridhist": Columns(np.full((3, old_width), 7, np.uint8), np.zeros(3, np.uint32),
                            np.ones(3, np.uint32)),
        "md5": Columns(np.full((1, 16), 9, np.uint8), np.zeros(1, np.uint32),
                       np.ones(1, np.uint32)),
    })
    store._write_list("old", lambda old, reader: data, "s", merge=False)
    assert store.lists()[0].counts == {"gridhist": 3, "md5": 1}
    index = store.load_index()
    assert index.stats()["gridhist"] == 0 and index.stats()["md5"] == 1
    assert len(list(store.export("old"))) == 4
    # a merge drops them: they can no longer match anything
    report = store.import_list("old", "s", batches([random_hex(16)], "md5"))
    assert report.totals == {"md5": 2} and report.removed == 3


def test_videos_round_trip(store: BaseHashStore) -> None:
    """A vPDQ list entry (one row per frame: 32 bytes of PDQ, 8 of video id) survives the
    store of either backend, and the loaded index matches the video."""
    import io
    import json

    from mailfilter.matching.formats import parse_stream
    from mailfilter.settings import MatchSettings

    frames = [f"{(i * 0x9E3779B97F4A7C15) ** 3 % (1 << 256):064x}" for i in range(1, 13)]
    features = [f"{h},90,{i}.0" for i, h in enumerate(frames)]
    text = "vpdq " + json.dumps(features) + "\n"
    report = store.import_list("videos", "v.hma (hma)",
                               parse_stream(io.BytesIO(text.encode()), "hma"), replace=True)
    assert report.loaded_total == 12  # counted in frames, as stored
    index = store.load_index()
    assert index.stats()["vpdq"] == 12
    rule = MatchSettings()
    [match] = index.search("vpdq", features, rule.pdq_max_distance, rule)
    assert (match.list_name, match.distance) == ("videos", 0.0)


async def test_a_version_that_went_back_is_raised_past_the_one_loaded(
        redis_url: str, redis_prefix: str) -> None:
    """A failover to a replica that missed the last commit: the store's version is lower
    than the one an instance loaded. The instance moves it past its own, so the next
    change cannot get a number already used for other lists (verdicts are cached under
    it), and loads what the store now holds."""
    settings = StoreSettings(redis_url=redis_url, key_prefix=redis_prefix, reload_interval=60.0)
    keys = KeyLayout(redis_prefix)
    client = redis.Redis.from_url(redis_url)
    with open_store(settings) as writer:
        writer.import_list("a", "s", batches([pdq_like() for _ in range(5)]), replace=True)
        lost = writer.import_list("b", "s", batches([pdq_like() for _ in range(7)]),
                                  replace=True)
        live = LiveIndex(open_store(settings), reload_interval=60.0)
        await live.start(wait=10)
        try:
            assert live.version == lost.version == 2 and len(live.current()) == 12
            # what the promoted replica holds: the commit of "b" never reached it
            client.hdel(keys.lists, "b")
            client.set(keys.version, 1)
            client.publish(keys.channel, 1)
            await wait_until(lambda: live.version > lost.version, timeout=10)
            assert writer.version() == live.version == lost.version + 1
            assert len(live.current()) == 5  # the store's lists, under a new number
            following = writer.import_list("c", "s", batches([pdq_like()]), replace=True)
            assert following.version == lost.version + 2
        finally:
            await live.stop()
            client.close()


async def test_a_local_store_whose_version_went_back_is_loaded_as_it_is(
        tmp_path: Path) -> None:
    """The local store cannot lose a commit, but its file can be put back from a copy:
    its lists are loaded under the number it has (no raising, and no spinning on it)."""
    settings = StoreSettings(path=tmp_path / "store", reload_interval=0.2)
    with open_store(settings) as writer:
        writer.import_list("a", "s", batches([pdq_like() for _ in range(3)]), replace=True)
        writer.import_list("b", "s", batches([pdq_like() for _ in range(4)]), replace=True)
    live = LiveIndex(open_store(settings), reload_interval=0.2)
    await live.start(wait=10)
    try:
        assert live.version == 2 and len(live.current()) == 7
        with sqlite3.connect(tmp_path / "store" / DB_NAME) as db:
            db.execute("UPDATE state SET value = '1' WHERE key = 'version'")
        await wait_until(lambda: live.version == 1, timeout=10)
        assert len(live.current()) == 7  # what the file holds, under its number
    finally:
        await live.stop()
