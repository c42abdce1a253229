"""The verdict cache: in-process LRU and Redis; keyed by version and settings; a broken
Redis is a miss, never an exception."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from conftest import free_port
from test_formats import pdq_like, random_hex

from mailfilter.matching.cache import (
    MemoryVerdictCache,
    RedisVerdictCache,
    decode,
    encode,
    open_cache,
    settings_namespace,
)
from mailfilter.model import ExactHashes, FrameFingerprint, ImageFingerprint, Match
from mailfilter.redis_connection import KeyLayout
from mailfilter.settings import Settings, StoreSettings


def fingerprint(skipped: str | None = None) -> ImageFingerprint:
    pdq = pdq_like()
    frames = () if skipped else (
        FrameFingerprint(frame=0, trimmed=False, pdq=pdq, pdq_quality=100,
                         pdq_dihedral=(pdq, pdq_like()), gridhist=random_hex(16),
                         gridhist_dihedral=(random_hex(16), random_hex(16))),
        FrameFingerprint(frame=0, trimmed=True, pdq=None, pdq_quality=10, pdq_dihedral=(),
                         gridhist=None, reason="low-quality"),
    )
    return ImageFingerprint(
        exact=ExactHashes(md5=random_hex(16), sha1=random_hex(20), sha256=random_hex(32)),
        width=640, height=480, image_format="PNG", frames=frames, frame_count=1,
        skipped=skipped, detail="boom" if skipped else "",
    )


MATCHES = (Match(list_name="te", algorithm="pdq", distance=3.0, labels=("a", "b"),
                 value=pdq_like()),)


@pytest.fixture
def redis_cache(redis_url: str, redis_prefix: str) -> Iterator[RedisVerdictCache]:
    cache = RedisVerdictCache(StoreSettings(redis_url=redis_url, key_prefix=redis_prefix,
                                            cache_ttl=60), namespace="ns1")
    yield cache
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=KeyLayout(redis_prefix).tag + "*"))
    if keys:
        client.delete(*keys)
    client.close()
    cache.close()


def test_json_round_trip() -> None:
    from mailfilter.matching.cache import CachedVerdict

    video_match = Match(list_name="v", algorithm="vpdq", distance=0.25, labels=(),
                        value=pdq_like(), at=12.5)
    verdict = CachedVerdict("ab" * 32, 7, fingerprint(), (*MATCHES, video_match), 1700000000.0)
    assert decode(encode(verdict)) == verdict
    with pytest.raises(ValueError):
        decode(b'{"format": 99}')


def test_entries_of_the_previous_format_are_still_read() -> None:
    from mailfilter.matching.cache import CachedVerdict

    verdict = CachedVerdict("ab" * 32, 7, fingerprint(), MATCHES, 1700000000.0)
    entry = json.loads(encode(verdict))
    entry["format"] = 4  # no gridhist_dihedral in frames, "at": null in every match
    for frame in entry["fingerprint"]["frames"]:
        del frame["gridhist_dihedral"]
    entry["matches"] = [{**m, "at": None} for m in entry["matches"]]
    old = decode(json.dumps(entry))
    assert old.matches == MATCHES
    assert [f.gridhist_dihedral for f in old.fingerprint.frames] == [(), ()]
    assert old.fingerprint.frames[0].gridhist == verdict.fingerprint.frames[0].gridhist


def test_memory_cache_version_ttl_and_lru() -> None:
    cache = MemoryVerdictCache(ttl=0.2, max_entries=2)
    fp = fingerprint()
    sha = fp.exact.sha256
    cache.put(sha, 1, fp, MATCHES)
    hit = cache.get(sha.upper(), 1)
    assert hit is not None and hit.fingerprint == fp and hit.matches == MATCHES
    assert cache.get(sha, 2) is None  # another index version
    cache.put("b" * 64, 1, fp, ())
    cache.get(sha, 1)  # sha is now the most recently used
    cache.put("c" * 64, 1, fp, ())
    assert cache.get("b" * 64, 1) is None and cache.get(sha, 1) is not None
    time.sleep(0.25)
    assert cache.get(sha, 1) is None and cache.get("c" * 64, 1) is None


def test_transient_failures_are_not_cached(redis_cache: RedisVerdictCache) -> None:
    memory = MemoryVerdictCache(ttl=60)
    for cache in (memory, redis_cache):
        for reason in ("deadline", "worker-crashed", "memory-limit"):
            cache.put("d" * 64, 1, fingerprint(skipped=reason), ())
            assert cache.get("d" * 64, 1) is None
        cache.put("e" * 64, 1, fingerprint(skipped="corrupt"), ())
        hit = cache.get("e" * 64, 1)
        assert hit is not None and hit.fingerprint.skipped == "corrupt"


def test_redis_cache_round_trip_ttl_and_keys(redis_cache: RedisVerdictCache,
                                             redis_url: str, redis_prefix: str) -> None:
    fp = fingerprint()
    sha = fp.exact.sha256
    assert redis_cache.get(sha, 3) is None
    redis_cache.put(sha, 3, fp, MATCHES)
    hit = redis_cache.get(sha, 3)
    assert hit is not None and hit.fingerprint == fp and hit.matches == MATCHES
    assert hit.version == 3
    assert redis_cache.get(sha, 4) is None
    key = redis_cache.key(sha, 3)
    assert key.startswith("{" + redis_prefix + "}:cache:ns1:3:")
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl(key) <= 60_000
    # another settings namespace does not see it
    other = RedisVerdictCache(StoreSettings(redis_url=redis_url, key_prefix=redis_prefix),
                              namespace="ns2")
    assert other.get(sha, 3) is None
    # garbage under the key is a miss, not an error
    client.set(key, b"\x80not json")
    assert redis_cache.get(sha, 3) is None
    client.close()
    other.close()


async def test_async_variants(redis_cache: RedisVerdictCache) -> None:
    fp = fingerprint()
    for cache in (redis_cache, MemoryVerdictCache(ttl=60)):
        await cache.aput(fp.exact.sha256, 9, fp, MATCHES)
        hit = await cache.aget(fp.exact.sha256, 9)
        assert hit is not None and hit.matches == MATCHES


def test_redis_down_is_a_miss_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    settings = StoreSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0", cache_ttl=60)
    cache = RedisVerdictCache(settings, backoff=30)
    fp = fingerprint()
    started = time.monotonic()
    assert cache.get(fp.exact.sha256, 1) is None
    cache.put(fp.exact.sha256, 1, fp, ())
    for _ in range(100):  # backing off: no connection attempts, no delay
        assert cache.get(fp.exact.sha256, 1) is None
    assert time.monotonic() - started < 3
    warnings = [r for r in caplog.records if "verdict cache unavailable" in r.getMessage()]
    assert len(warnings) == 1  # logged once per change of state


def test_open_cache_and_namespace(tmp_path: object, redis_url: str) -> None:
    assert isinstance(open_cache(StoreSettings()), MemoryVerdictCache)
    cache = open_cache(StoreSettings(redis_url=redis_url))
    assert isinstance(cache, RedisVerdictCache)
    cache.close()
    a = settings_namespace(Settings())
    b = settings_namespace(Settings.model_validate({"match": {"pdq_max_distance": 20}}))
    assert a != b and len(a) == 12
    assert settings_namespace(Settings()) == a
