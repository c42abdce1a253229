"""The shared quarantine index in Redis: a summary of every instance's entries, so that
`mailfilter quarantine list` on any instance shows them all and commands given on the
wrong instance can say where an entry lives.

One Redis hash, ``T:quarantine`` (``T`` the deployment's hash tag, as for the hash lists:
``{key_prefix}``, or `key_prefix` itself when it already holds a ``{…}`` tag, so every key
of a deployment sits in one Redis Cluster slot): field = entry id, value = the JSON summary
of `records.EntrySummary` (id, host, received, status, legal hold, envelope, subject,
lists, ...). No message content, ever.

The index is a convenience, never the truth: the files on disk are. It is written by the
report sender through the durable outbox (so a Redis outage delays it, never loses it and
never fails a quarantine write) and by operator commands; `mailfilter quarantine reindex`
rebuilds an instance's part from its directory. Without `store.redis_url` there is no
index: each instance's directory is its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from typing import Final

import redis

from mailfilter.actions.records import EntrySummary
from mailfilter.errors import TemporaryFailure
from mailfilter.redis_connection import KeyLayout, redis_client
from mailfilter.settings import StoreSettings

__all__ = ["IndexUnavailable", "QuarantineIndex", "open_index"]

_SCAN_COUNT: Final = 1000


class IndexUnavailable(TemporaryFailure):
    """The index could not be read or written (Redis down, slow, refusing); `detail` is
    Redis's own message. Callers decide: the service retries through the outbox, commands
    warn and fall back to the local directory."""

    def __init__(self, detail: str) -> None:
        super().__init__("quarantine-index-unavailable", detail)


@contextlib.contextmanager
def _unavailable_on_redis_error() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise IndexUnavailable(str(exc)) from exc


class QuarantineIndex:
    """Blocking; IndexUnavailable on failure."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.key = KeyLayout(key_prefix).quarantine

    def put(self, summary: EntrySummary) -> None:
        with _unavailable_on_redis_error():
            self.client.hset(self.key, summary.id,
                             json.dumps(summary.to_json(), ensure_ascii=False))

    def remove(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        with _unavailable_on_redis_error():
            return int(self.client.hdel(self.key, *ids))

    def get(self, entry_id: str) -> EntrySummary | None:
        with _unavailable_on_redis_error():
            raw = self.client.hget(self.key, entry_id)
        return None if raw is None else _decode(raw)

    def all(self) -> list[EntrySummary]:
        """Every summary, ordered by id (ids sort by time)."""
        out = []
        with _unavailable_on_redis_error():
            for _field, raw in self.client.hscan_iter(self.key, count=_SCAN_COUNT):
                summary = _decode(raw)
                if summary is not None:
                    out.append(summary)
        return sorted(out, key=lambda s: (len(s.id), s.id))

    def replace_host(self, host: str, summaries: Iterable[EntrySummary]) -> tuple[int, int]:
        """Make the index's entries of `host` exactly `summaries`: (written, removed)."""
        fresh = {s.id: s for s in summaries}
        stale = [s.id for s in self.all() if s.host == host and s.id not in fresh]
        with _unavailable_on_redis_error():
            pipe = self.client.pipeline(transaction=False)
            for entry_id, summary in fresh.items():
                pipe.hset(self.key, entry_id, json.dumps(summary.to_json(), ensure_ascii=False))
            if stale:
                pipe.hdel(self.key, *stale)
            pipe.execute()
        return len(fresh), len(stale)

    def close(self) -> None:
        self.client.close()


def _decode(raw: bytes | str) -> EntrySummary | None:
    """A summary any version wrote (what this one does not know is kept); None for what
    is not one."""
    try:
        value = json.loads(raw)
        return EntrySummary.from_json(value) if isinstance(value, dict) else None
    except ValueError:
        return None


def open_index(settings: StoreSettings) -> QuarantineIndex | None:
    """The index, or None without `store.redis_url`. Short timeouts: a command should not
    hang on a dead Redis, and the service calls it from the outbox, never on the mail path."""
    if not settings.redis_url:
        return None
    client = redis_client(settings, socket_connect_timeout=3.0, socket_timeout=5.0)
    return QuarantineIndex(client, settings.key_prefix)
