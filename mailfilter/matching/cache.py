"""The verdict cache: an attachment's SHA-256 -> its fingerprint and matches.

The same image arrives again and again (newsletters, forwards, a spam run), and decoding
and hashing it is the expensive part of a scan. Entries are keyed by the index version
they were matched against, so a list update makes every older entry unreachable (they
expire with their TTL), and by a namespace derived from the settings that shape a result
(image limits, match thresholds), so a configuration change does the same.

Two implementations with one API (`get`, `put`; `aget`/`aput` for the event loop):

- `RedisVerdictCache`, used with the Redis store: shared by every instance, ``SET … EX``;
  values are JSON (never pickle: a value read from a shared server must not be able to
  run code here);
- `MemoryVerdictCache`, with the local store: an in-process LRU with the same TTL.

The cache is an optimisation only: any Redis error (down, slow, out of memory) means a
miss or a skipped write, logged once per change of state, never an exception; after an
error Redis is left alone for a few seconds so a dead server does not cost a timeout per
attachment. Results of transient failures (a worker that crashed or ran out of time) are
not cached.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mailfilter.model import ExactHashes, FrameFingerprint, ImageFingerprint, Match
from mailfilter.redis_connection import KeyLayout, redis_client
from mailfilter.settings import Settings, StoreSettings, redis_layout

__all__ = [
    "CachedVerdict",
    "MemoryVerdictCache",
    "RedisVerdictCache",
    "VerdictCache",
    "open_cache",
    "settings_namespace",
]

log = logging.getLogger("mailfilter.matching.cache")

# 2: `incomplete` (entries of 1 would hide it); 3: no-pixel-data (was corrupt); 4: videos;
# 5: frames keep `gridhist_dihedral`, matches are `Match.as_json` (no "at" when None).
FORMAT: Final = 5
READABLE_FORMATS: Final = frozenset({4, FORMAT})
"""Formats `decode` takes: an entry of 4 (no gridhist dihedral hashes, which a cached
result never needs: its matches are cached with it) stays a hit across the upgrade."""
TRANSIENT_REASONS: Final = frozenset({"deadline", "worker-crashed", "memory-limit",
                                      "worker-result-refused"})
"""Skip reasons that say nothing about the image itself: never cached."""

REDIS_TIMEOUT: Final = 0.5
BACKOFF_SECONDS: Final = 10.0
MEMORY_ENTRIES: Final = 20_000


@dataclass(frozen=True, slots=True)
class CachedVerdict:
    sha256: str
    version: int
    fingerprint: ImageFingerprint
    matches: tuple[Match, ...]
    stored_at: float


# --- JSON ----------------------------------------------------------------------------------------


def _frame_json(f: FrameFingerprint) -> dict[str, Any]:
    return {
        "frame": f.frame, "trimmed": f.trimmed, "pdq": f.pdq, "pdq_quality": f.pdq_quality,
        "pdq_dihedral": list(f.pdq_dihedral), "gridhist": f.gridhist, "reason": f.reason,
        "gridhist_dihedral": list(f.gridhist_dihedral),
    }


def encode(verdict: CachedVerdict) -> bytes:
    fp = verdict.fingerprint
    return json.dumps({
        "format": FORMAT,
        "sha256": verdict.sha256,
        "version": verdict.version,
        "stored_at": verdict.stored_at,
        "fingerprint": {
            "exact": {"md5": fp.exact.md5, "sha1": fp.exact.sha1, "sha256": fp.exact.sha256},
            "width": fp.width, "height": fp.height, "image_format": fp.image_format,
            "frames": [_frame_json(f) for f in fp.frames], "frame_count": fp.frame_count,
            "skipped": fp.skipped, "detail": fp.detail, "incomplete": fp.incomplete,
            "vpdq": list(fp.vpdq), "frame_times": list(fp.frame_times),
            "duration": fp.duration,
        },
        "matches": [m.as_json() for m in verdict.matches],
    }, separators=(",", ":")).encode()


def decode(raw: bytes | str) -> CachedVerdict:
    """ValueError/KeyError/TypeError for anything that is not a cache entry we wrote."""
    obj = json.loads(raw)
    if obj.get("format") not in READABLE_FORMATS:
        raise ValueError("unknown cache entry format")
    f = obj["fingerprint"]
    frames = tuple(
        FrameFingerprint(
            frame=int(x["frame"]), trimmed=bool(x["trimmed"]), pdq=x["pdq"],
            pdq_quality=int(x["pdq_quality"]), pdq_dihedral=tuple(x["pdq_dihedral"]),
            gridhist=x["gridhist"], reason=x["reason"],
            gridhist_dihedral=tuple(str(h) for h in x.get("gridhist_dihedral", ())),
        )
        for x in f["frames"]
    )
    fingerprint = ImageFingerprint(
        exact=ExactHashes(**{k: str(v) for k, v in f["exact"].items()}),
        width=int(f["width"]), height=int(f["height"]), image_format=f["image_format"],
        frames=frames, frame_count=int(f["frame_count"]), skipped=f["skipped"],
        detail=str(f["detail"]), incomplete=f.get("incomplete"),
        vpdq=tuple(str(v) for v in f["vpdq"]),
        frame_times=tuple(float(t) for t in f["frame_times"]), duration=float(f["duration"]),
    )
    matches = tuple(Match.from_json(m) for m in obj["matches"])
    return CachedVerdict(str(obj["sha256"]), int(obj["version"]), fingerprint, matches,
                         float(obj["stored_at"]))


def settings_namespace(settings: Settings) -> str:
    """A short digest of the settings that shape a cached result."""
    shaping = {
        "images": settings.images.model_dump(mode="json"),
        "video": settings.video.model_dump(mode="json"),
        "match": settings.match.model_dump(mode="json"),
    }
    text = json.dumps(shaping, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cacheable(fingerprint: ImageFingerprint) -> bool:
    # frames-past-limit may come from the frame budget, which depends on the load
    return (fingerprint.skipped not in TRANSIENT_REASONS
            and fingerprint.incomplete != "frames-past-limit")


# --- the API --------------------------------------------------------------------------------------


class VerdictCache(Protocol):
    def get(self, sha256: str, version: int) -> CachedVerdict | None: ...

    def put(self, sha256: str, version: int, fingerprint: ImageFingerprint,
            matches: Sequence[Match]) -> None: ...

    async def aget(self, sha256: str, version: int) -> CachedVerdict | None: ...

    async def aput(self, sha256: str, version: int, fingerprint: ImageFingerprint,
                   matches: Sequence[Match]) -> None: ...

    def close(self) -> None: ...


class MemoryVerdictCache:
    """In-process LRU with a TTL (the local store's cache)."""

    def __init__(self, ttl: float, max_entries: int = MEMORY_ENTRIES,
                 namespace: str = "") -> None:
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self.namespace = namespace
        self._entries: collections.OrderedDict[tuple[int, str], tuple[float, CachedVerdict]]
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, version: int) -> CachedVerdict | None:
        if self.ttl <= 0:
            return None
        key = (version, sha256.lower())
        now = time.monotonic()
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            expires, verdict = found
            if expires <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return verdict

    def put(self, sha256: str, version: int, fingerprint: ImageFingerprint,
            matches: Sequence[Match]) -> None:
        if self.ttl <= 0 or not _cacheable(fingerprint):
            return
        key = (version, sha256.lower())
        verdict = CachedVerdict(key[1], version, fingerprint, tuple(matches), time.time())
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl, verdict)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    async def aget(self, sha256: str, version: int) -> CachedVerdict | None:
        return self.get(sha256, version)

    async def aput(self, sha256: str, version: int, fingerprint: ImageFingerprint,
                   matches: Sequence[Match]) -> None:
        self.put(sha256, version, fingerprint, matches)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()


class RedisVerdictCache:
    """Shared cache in Redis; every error is a miss (see the module's docstring)."""

    def __init__(self, settings: StoreSettings, namespace: str = "",
                 client: redis.Redis | None = None,
                 backoff: float = BACKOFF_SECONDS) -> None:
        self.ttl = settings.cache_ttl
        self.namespace = namespace or "-"
        self.keys = KeyLayout(settings.key_prefix)
        self.location = redis_layout(settings)
        self.backoff = backoff
        self.client: redis.Redis = client or redis_client(
            settings,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._failing_until = 0.0
        self._failing = False
        self._lock = threading.Lock()

    def key(self, sha256: str, version: int) -> str:
        return self.keys.cache(self.namespace, version, sha256.lower())

    def _usable(self) -> bool:
        return self.ttl > 0 and time.monotonic() >= self._failing_until

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self._failing_until = time.monotonic() + self.backoff
            if not self._failing:
                log.warning("verdict cache unavailable, scanning without it",
                            extra={"fields": {"redis": self.location, "error": str(exc)}})
            self._failing = True

    def _worked(self) -> None:
        if self._failing:
            with self._lock:
                if self._failing:
                    log.info("verdict cache available again",
                             extra={"fields": {"redis": self.location}})
                self._failing = False

    def get(self, sha256: str, version: int) -> CachedVerdict | None:
        if not self._usable():
            return None
        try:
            raw = self.client.get(self.key(sha256, version))
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._worked()
        if raw is None:
            return None
        try:
            verdict = decode(raw)
        except (ValueError, KeyError, TypeError):
            return None
        if verdict.version != version or verdict.sha256 != sha256.lower():
            return None
        return verdict

    def put(self, sha256: str, version: int, fingerprint: ImageFingerprint,
            matches: Sequence[Match]) -> None:
        if not self._usable() or not _cacheable(fingerprint):
            return
        verdict = CachedVerdict(sha256.lower(), version, fingerprint, tuple(matches),
                                time.time())
        try:
            self.client.set(self.key(sha256, version), encode(verdict),
                            px=max(1, int(self.ttl * 1000)))
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._worked()

    async def aget(self, sha256: str, version: int) -> CachedVerdict | None:
        if not self._usable():
            return None
        return await asyncio.to_thread(self.get, sha256, version)

    async def aput(self, sha256: str, version: int, fingerprint: ImageFingerprint,
                   matches: Sequence[Match]) -> None:
        if not self._usable():
            return
        await asyncio.to_thread(self.put, sha256, version, fingerprint, matches)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def open_cache(settings: StoreSettings, namespace: str = "") -> VerdictCache:
    """Redis when the store is Redis, else in-process. `namespace`: `settings_namespace`."""
    if settings.redis_url:
        return RedisVerdictCache(settings, namespace)
    return MemoryVerdictCache(settings.cache_ttl, namespace=namespace)
