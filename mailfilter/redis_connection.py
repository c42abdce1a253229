"""The one way to Redis: the client for `store.redis_url` and every key name used there.

The hash store (`matching/store_redis.py`), the verdict cache (`matching/cache.py`) and
the shared quarantine index (`actions/quarantine_index.py`) all reach the same server,
with the same credentials and TLS checks, under the same key prefix: this module is what
they share, so none of them reaches into another for it.

Three layouts, one client API (docs/scale-out.md):

- a single Redis at `redis_url`;
- Redis Sentinel (`redis_sentinels`, `redis_sentinel_service`): the sentinels are asked
  for the current master whenever a connection is made, so after a promotion the next
  connection goes to the new master (a connection still open to a demoted master fails,
  and is made again); `redis_url` gives the database, user and password;
- Redis Cluster (`redis_cluster`): `redis_url` names any node (`redis_cluster_nodes` more
  of them, for when that one is down), the slot map is read from it and followed through
  failovers. Every key of a deployment carries one hash tag, so
  all of them, and every multi-key command and script, live in one slot, on one node:
  a cluster gives the deployment a replica that takes over, not more capacity.

Key layout (``T`` is the deployment's hash tag: ``{key_prefix}``, or `key_prefix` itself
when it already contains a ``{…}`` tag). Every key carries the same tag, so multi-key
commands (the store's commit) run on Redis Cluster too (one slot).

=================================  ======  ===============================================
``T:version``                      string  the version: INCR by every change; raised past
                                           a version an instance had loaded when a failover
                                           lost commits (store_redis.py)
``T:lists``                        hash    list name -> its current generation id
``T:generation``                   string  counter giving each written list a fresh id
``T:list:G:meta``                  string  JSON: name, source, times, label table, counts
``T:list:G:ALG:v:I``               string  chunk I of the raw values (fixed width records)
``T:list:G:ALG:l:I``               string  chunk I of the label-set ids (uint8/16/32)
``T:list:G:ALG:a:I``               string  chunk I of the added times (uint32 seconds)
``T:changed``                      channel PUBLISHed with the new version on every change
``T:cache:…``                      string  verdict cache entries (see cache.py), with TTL
``T:quarantine``                   hash    the shared quarantine index (entry id -> JSON)
=================================  ======  ===============================================
"""

from __future__ import annotations

import re
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelManagedSSLConnection

from mailfilter.settings import StoreSettings, split_host_port

__all__ = ["KeyLayout", "is_cluster", "redis_client"]

_SENTINEL_OPTIONS = ("socket_timeout", "socket_connect_timeout", "socket_keepalive")
"""Options of a caller that apply to the connections to the sentinels too."""


def _tls_options(settings: StoreSettings) -> dict[str, Any]:
    """For rediss://: the server's certificate is verified, host name included, against
    `redis_ca_file` (a private CA) or else the system's trusted CAs: said here, not left to
    the defaults of whichever redis-py is installed."""
    if not settings.redis_url.startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_ca_file:
        options["ssl_ca_certs"] = settings.redis_ca_file
    return options


def redis_client(settings: StoreSettings, **options: Any) -> redis.Redis:
    """A client for the layout the settings name: a single server (`redis_url`), the master
    of a Sentinel service, or a Cluster. An ACL user and password go in the URL; rediss://
    verifies certificates (`_tls_options`), to the sentinels too. `options`: timeouts,
    retries, applied to every server's connections."""
    tls = _tls_options(settings)
    for key, value in tls.items():
        if key == "ssl_ca_certs":
            options[key] = value
        else:
            options.setdefault(key, value)
    if settings.redis_sentinels:
        return _sentinel_master(settings, tls, options)
    if settings.redis_cluster:
        # RedisCluster is not a redis.Redis subclass but answers the same commands for
        # what mailfilter sends (single-slot keys, pipelines, MULTI, scripts, pub/sub);
        # tests/ha runs the store, cache and quarantine index on a real cluster.
        # The URL's node is tried last: redis-py appends it to `startup_nodes`.
        nodes = [ClusterNode(*split_host_port(a))  # type: ignore[no-untyped-call]
                 for a in settings.redis_cluster_nodes]
        cluster = RedisCluster.from_url(settings.redis_url, startup_nodes=nodes, **options)
        return cast(redis.Redis, cluster)
    return redis.Redis.from_url(settings.redis_url, **options)


def _sentinel_master(settings: StoreSettings, tls: dict[str, Any],
                     options: dict[str, Any]) -> redis.Redis:
    url: dict[str, Any] = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    master = {key: url[key] for key in ("username", "password", "db") if key in url}
    sentinel_options: dict[str, Any] = {k: options[k] for k in _SENTINEL_OPTIONS
                                        if k in options}
    if settings.redis_sentinel_password:
        sentinel_options["password"] = settings.redis_sentinel_password
    if tls:
        sentinel_options.update(ssl=True, **tls)
        options["connection_class"] = SentinelManagedSSLConnection
    sentinels = [split_host_port(address) for address in settings.redis_sentinels]
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_options)
    # check_connection: a new connection PINGs the master the sentinels named, so one that
    # is gone is noticed when connecting, not by the first command.
    client: redis.Redis = manager.master_for(settings.redis_sentinel_service,
                                             check_connection=True, **master, **options)
    return client


def is_cluster(client: redis.Redis) -> bool:
    return isinstance(client, RedisCluster)


class KeyLayout:
    """Every key name the Redis store, the verdict cache and the quarantine index use (the
    table above)."""

    def __init__(self, key_prefix: str) -> None:
        self.tag = key_prefix if re.search(r"\{[^{}]+\}", key_prefix) else "{" + key_prefix + "}"
        self.version = f"{self.tag}:version"
        self.lists = f"{self.tag}:lists"
        self.generation = f"{self.tag}:generation"
        self.channel = f"{self.tag}:changed"
        self.quarantine = f"{self.tag}:quarantine"  # the shared quarantine index (a hash)

    def meta(self, generation: str) -> str:
        return f"{self.tag}:list:{generation}:meta"

    def chunk(self, generation: str, algorithm: str, kind: str, index: int) -> str:
        return f"{self.tag}:list:{generation}:{algorithm}:{kind}:{index}"

    def cache(self, namespace: str, version: int, sha256: str) -> str:
        return f"{self.tag}:cache:{namespace}:{version}:{sha256}"
