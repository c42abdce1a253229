"""The shared hash store in Redis: one copy of the lists for every filter instance.

Key names (``T`` the deployment's hash tag, ``G`` a generation id) are those of
`mailfilter.redis_connection.KeyLayout`, with the table of them; the client comes from its
`redis_client`.

A list written by an import never changes: an import writes the new list under a fresh
generation id (keys with a TTL while building, so a crashed import leaves nothing
behind), then one Lua script checks the list still points where the import started from,
switches the pointer, makes the new keys persistent, gives the old generation's keys a
short grace TTL (readers still busy with it finish; later readers see the new one), INCRs
the version and PUBLISHes it. Readers take the version and pointers in one MULTI, then
read chunks; a chunk gone missing (a reader slower than the grace period) makes them start
again. Every key is under the deployment's hash tag, so the script and the MULTI stay in
one slot on Redis Cluster.

With Sentinel or Cluster, whose replicas may be promoted, a commit then WAITs for a replica
to have it. Should a failover still lose a commit some instance had loaded, that instance
finds the version lower than its own and raises it past (`raise_version`): a version
number never names two different sets of lists, which the verdict cache relies on.

Cold load: ten million PDQ hashes are 320 MB in 40 chunks of 8 MB, read with pipelined
GETs straight into one numpy array. Committed list keys have no TTL, so a
``volatile-*`` eviction policy never evicts them (only cache entries); under
``allkeys-*`` policies lists could be evicted: run Redis with ``noeviction`` or
``volatile-lru``, and with persistence (AOF) so a restart keeps the lists. A Redis that
comes back empty is noticed by `LiveIndex` (version 0) and refused.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import redis
from redis.backoff import ExponentialBackoff
from redis.client import PubSub
from redis.retry import Retry

from mailfilter.errors import TemporaryFailure
from mailfilter.matching.store import (
    BaseHashStore,
    ListData,
    ListMeta,
    SnapshotChanged,
    StoreReader,
    encode_chunks,
    meta_for,
)
from mailfilter.redis_connection import KeyLayout, is_cluster, redis_client
from mailfilter.settings import StoreSettings, redis_layout

__all__ = ["RedisHashStore"]

log = logging.getLogger("mailfilter.matching.store_redis")

GRACE_SECONDS: Final = 120.0
"""How long a replaced list's keys live on for readers that started before the switch."""

BUILDING_TTL_SECONDS: Final = 6 * 3600.0
"""TTL of keys being written by an import until its commit (a crashed import's leftovers
go away by themselves)."""

PIPELINE_BYTES: Final = 64 * 1024 * 1024
"""Bytes sent or fetched per pipeline round trip."""

COMMIT_ATTEMPTS: Final = 10

# KEYS: 1 lists, 2 version, 3..2+n_new the new generation's keys, the rest the old one's.
# ARGV: 1 list name, 2 new generation ("" deletes the list), 3 the generation the writer
#       started from ("" none), 4 n_new, 5 grace in ms, 6 the change channel.
_COMMIT_LUA: Final = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then current = '' end
if current ~= ARGV[3] then return {-1, current} end
local n_new = tonumber(ARGV[4])
for i = 3, 2 + n_new do
  if redis.call('EXISTS', KEYS[i]) == 0 then return {-2, KEYS[i]} end
end
for i = 3, 2 + n_new do redis.call('PERSIST', KEYS[i]) end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
for i = 3 + n_new, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[6], version)
return {version, current}
"""

# After a failover lost commits (see `raise_version`). KEYS: 1 version.
# ARGV: 1 the highest version seen, 2 the change channel.
_RAISE_LUA: Final = """
local version = tonumber(redis.call('GET', KEYS[1]) or '0')
local seen = tonumber(ARGV[1])
if version > seen then return version end
version = redis.call('INCRBY', KEYS[1], seen + 1 - version)
redis.call('PUBLISH', ARGV[2], version)
return version
"""

REPLICA_WAIT_MS: Final = 2000
"""With Sentinel or Cluster: how long a commit waits for a replica to have it (WAIT)."""


def _list_keys(keys: KeyLayout, meta: ListMeta) -> list[str]:
    """Every key of one written list: its meta and all its column chunks."""
    names = [keys.meta(meta.generation)]
    for algorithm in meta.counts:
        for index in range(meta.chunks(algorithm)):
            names.extend(keys.chunk(meta.generation, algorithm, kind, index)
                         for kind in ("v", "l", "a"))
    return names


class _RedisReader:
    """A snapshot: the version and list pointers from one MULTI; chunks read on demand."""

    def __init__(self, client: redis.Redis, keys: KeyLayout) -> None:
        self._client = client
        self._keys = keys
        with client.pipeline(transaction=True) as pipe:
            pipe.get(keys.version)
            pipe.hgetall(keys.lists)
            raw_version, pointers = pipe.execute()
        self.version = int(raw_version or 0)
        names = [n.decode() for n in pointers]
        generations = [pointers[n].decode() for n in pointers]
        self.metas: dict[str, ListMeta] = {}
        if names:
            raw_metas = client.mget([keys.meta(g) for g in generations])
            for name, generation, raw in zip(names, generations, raw_metas, strict=True):
                if raw is None:
                    raise SnapshotChanged(name)
                meta = ListMeta.from_json(raw)
                meta.generation = generation
                self.metas[name] = meta

    def chunks(self, meta: ListMeta, algorithm: str, kind: str) -> Iterator[bytes]:
        count = meta.chunks(algorithm)
        width = meta.width(algorithm) if kind == "v" else 4
        per_round = max(1, PIPELINE_BYTES // max(1, meta.chunk_records[algorithm] * width))
        for start in range(0, count, per_round):
            keys = [self._keys.chunk(meta.generation, algorithm, kind, i)
                    for i in range(start, min(count, start + per_round))]
            with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                found: list[bytes | None] = pipe.execute()
            for raw in found:
                if raw is None:
                    raise SnapshotChanged(meta.name)
                yield raw


class RedisHashStore(BaseHashStore):
    backend = "redis"

    def __init__(self, settings: StoreSettings, *, grace: float = GRACE_SECONDS,
                 building_ttl: float = BUILDING_TTL_SECONDS,
                 client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.location = redis_layout(settings)
        self.keys = KeyLayout(settings.key_prefix)
        self.grace_ms = max(1, int(grace * 1000))
        self.building_ttl_ms = max(1000, int(building_ttl * 1000))
        self.client: redis.Redis = client or redis_client(
            settings,
            socket_connect_timeout=5.0,
            socket_timeout=60.0,
            health_check_interval=30,
            # A few quick retries ride out a failover; a dead server is reported within
            # about a second (LiveIndex then serves its last copy and says so).
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        )
        self._commit = self.client.register_script(_COMMIT_LUA)
        self._raise = self.client.register_script(_RAISE_LUA)
        # Sentinel and Cluster deployments have replicas that may be promoted: a commit is
        # reported once one of them has it (`_replicated`).
        self._has_replicas = bool(settings.redis_sentinels) or settings.redis_cluster
        self._pubsub: PubSub | None = None
        self._pubsub_lock = threading.Lock()

    # -- primitives --
    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise TemporaryFailure("store-unavailable", f"redis {self.location}: {exc}") from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[StoreReader]:
        yield _RedisReader(self.client, self.keys)

    def version(self) -> int:
        with self._errors():
            return int(self.client.get(self.keys.version) or 0)

    def _write_chunks(self, meta: ListMeta, data: ListData) -> list[str]:
        generation = meta.generation
        keys: list[str] = []
        pipe = self.client.pipeline(transaction=False)
        pending = 0
        try:
            for algorithm, kind, index, blob in encode_chunks(meta, data):
                key = self.keys.chunk(generation, algorithm, kind, index)
                pipe.set(key, blob, px=self.building_ttl_ms)
                keys.append(key)
                pending += len(blob)
                if pending >= PIPELINE_BYTES:
                    pipe.execute()
                    pending = 0
            meta_key = self.keys.meta(generation)
            pipe.set(meta_key, meta.to_json(), px=self.building_ttl_ms)
            pipe.execute()
        finally:
            pipe.reset()
        return [meta_key, *keys]

    def _discard(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 512):
            self.client.unlink(*keys[start:start + 512])

    def _write_list(self, name: str,
                    compute: Callable[[ListMeta | None, StoreReader | None], ListData | None],
                    source: str, merge: bool) -> tuple[int, ListMeta | None]:
        new_keys: list[str] = []
        meta: ListMeta | None = None
        need_compute = True
        try:
            for attempt in range(COMMIT_ATTEMPTS):
                reader = _RedisReader(self.client, self.keys)
                old = reader.metas.get(name)
                if need_compute:
                    try:
                        data = compute(old, reader)
                    except SnapshotChanged:
                        continue
                    now = time.time()
                    if data is None:
                        meta = None
                    else:
                        generation = str(self.client.incr(self.keys.generation))
                        meta = meta_for(name, source, data, old.created if old else now, now,
                                        generation)
                        new_keys = self._write_chunks(meta, data)
                    # A replacement does not depend on the old list: on a conflict only
                    # the commit is tried again. A merge must be recomputed.
                    need_compute = merge
                old_keys = _list_keys(self.keys, old) if old else []
                result: list[Any] = self._commit(
                    keys=[self.keys.lists, self.keys.version, *new_keys, *old_keys],
                    args=[name, meta.generation if meta else "", old.generation if old else "",
                          len(new_keys), self.grace_ms, self.keys.channel],
                )
                code = int(result[0])
                if code > 0:
                    new_keys = []  # committed: they belong to the store now
                    self._replicated()
                    return code, meta
                if code == -2:
                    raise TemporaryFailure(
                        "store-error",
                        f"list {name!r}: keys of the new list expired before the commit "
                        "(the import took longer than the building TTL)",
                    )
                if merge and new_keys:
                    self._discard(new_keys)
                    new_keys = []
                time.sleep(random.uniform(0.005, 0.02 * (attempt + 1)))  # jitter
            raise TemporaryFailure(
                "store-busy", f"list {name!r} kept changing under the import; try again"
            )
        finally:
            if new_keys:
                with contextlib.suppress(redis.RedisError):
                    self._discard(new_keys)

    def _replicated(self) -> None:
        """Wait until a replica has the commit (WAIT): asynchronous replication loses the
        last writes when the master dies first, and a list change reported as done should
        survive the failover that follows. Sentinel and Cluster promote the replica that
        received the most, so one acknowledgement is enough. No acknowledgement within
        REPLICA_WAIT_MS (every replica down) is logged, not failed: the commit is in,
        and `raise_version` keeps versions unique should it be lost."""
        if not self._has_replicas:
            return
        try:
            if is_cluster(self.client):
                # WAIT has no key: send it to the node that owns the deployment's slot.
                node = self.client.get_node_from_key(self.keys.version)  # type: ignore[attr-defined]
                acknowledged = self.client.execute_command(  # type: ignore[no-untyped-call]
                    "WAIT", 1, REPLICA_WAIT_MS, target_nodes=node)
            else:
                acknowledged = self.client.execute_command(  # type: ignore[no-untyped-call]
                    "WAIT", 1, REPLICA_WAIT_MS)
        except redis.RedisError as exc:
            acknowledged = f"error: {exc}"
        if not (isinstance(acknowledged, int) and acknowledged >= 1):
            log.warning("a list change is committed but no replica acknowledged it yet",
                        extra={"fields": {"redis": self.location,
                                          "replicas": str(acknowledged)}})

    def raise_version(self, seen: int) -> int:
        with self._errors():
            return int(self._raise(keys=[self.keys.version],
                                   args=[seen, self.keys.channel]))

    def purge(self) -> int:
        """Delete every key of this deployment (lists, counters, cache entries): for tests
        and benchmarks that made their own prefix. Returns how many keys went."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.keys.tag) + ":*"
        removed = 0
        with self._errors():
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    removed += int(self.client.unlink(*batch))
                    batch.clear()
            if batch:
                removed += int(self.client.unlink(*batch))
        return removed

    def wait_for_change(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._pubsub_lock, self._errors():
            try:
                if self._pubsub is None:
                    # Plain SUBSCRIBE on every layout. On a Cluster, RedisCluster.pubsub()
                    # subscribes at the node owning the channel's slot (the deployment's)
                    # and a PUBLISH reaches subscribers on every node over the cluster
                    # bus. Sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7) would keep the
                    # message on the slot's shard, but the commit script would need a
                    # second variant for it, and it saves nothing worth having here: one
                    # small message per list change. After a failover the subscription's
                    # connection fails; the next call subscribes again, at the server that
                    # now holds the slot (Cluster) or is the master (Sentinel).
                    pubsub = self.client.pubsub(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8
                        ignore_subscribe_messages=True
                    )
                    pubsub.subscribe(self.keys.channel)
                    self._pubsub = pubsub
                    # A change published before this subscription was missed: say "maybe
                    # changed" so the caller reads the version again, now that nothing more
                    # can be missed (a lost notification would wait for the next poll).
                    return True
                changed = False
                while True:
                    # Once a notification came, only drain what is already buffered.
                    wait = 0.0 if changed else max(0.0, deadline - time.monotonic())
                    message = self._pubsub.get_message(timeout=wait)
                    if message is None:
                        if changed or time.monotonic() >= deadline:
                            return changed
                        time.sleep(0.005)  # a subscribe confirmation was consumed
                        continue
                    if message.get("type") == "message":
                        changed = True
            except redis.RedisError:
                self._close_pubsub()
                raise

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
            self._pubsub = None

    def close(self) -> None:
        with self._pubsub_lock:
            self._close_pubsub()
        with contextlib.suppress(Exception):
            self.client.close()
