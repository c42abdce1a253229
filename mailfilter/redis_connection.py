"""The one way to Redis: the client for `store.redis_url` and every key name used there.

The hash store (`matching/store_redis.py`), the verdict cache (`matching/cache.py`) and
the shared quarantine index (`actions/quarantine_index.py`) all reach the same server,
with the same credentials and TLS checks, under the same key prefix: this module is what
they share, so none of them reaches into another for it.

Key layout (``T`` is the deployment's hash tag: ``{key_prefix}``, or `key_prefix` itself
when it already contains a ``{…}`` tag). Every key carries the same tag, so multi-key
commands (the store's commit) run on Redis Cluster too (one slot).

=================================  ======  ===============================================
``T:version``                      string  the version counter, INCR by every change
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
from typing import Any

import redis

from mailfilter.settings import StoreSettings

__all__ = ["KeyLayout", "redis_client"]


def redis_client(settings: StoreSettings, **options: Any) -> redis.Redis:
    """A client for `settings.redis_url` (an ACL user and password go in the URL). For
    rediss:// the server's certificate is verified, host name included, against
    `redis_ca_file` (a private CA) or else the system's trusted CAs: said here, not left to
    the defaults of whichever redis-py is installed. `options`: timeouts, retries."""
    if settings.redis_url.startswith("rediss://"):
        options.setdefault("ssl_cert_reqs", "required")
        options.setdefault("ssl_check_hostname", True)
        if settings.redis_ca_file:
            options["ssl_ca_certs"] = settings.redis_ca_file
    return redis.Redis.from_url(settings.redis_url, **options)


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
