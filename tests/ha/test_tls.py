"""Sentinel over TLS with a sentinel password: the master, its replica and the sentinels
speak only TLS (certificates from a test CA), the sentinels want a password. With a
rediss:// `redis_url`, `redis_ca_file` and `redis_sentinel_password`, mailfilter reaches
the sentinels and the master they name over verified TLS; without the CA, or with a wrong
sentinel password, it is refused, and no password shows in what it says."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faults.redis_server import issue_cert, make_ca

from ha.servers import SentinelLayout, Tls
from mailfilter.errors import TemporaryFailure
from mailfilter.matching.index import IndexEntry
from mailfilter.matching.store import batches_from_entries
from mailfilter.matching.store_redis import RedisHashStore
from mailfilter.settings import StoreSettings

# Five TLS servers and three sentinels to start: about 10 s for the module.
pytestmark = pytest.mark.slow

SENTINEL_PASSWORD = "Sentinel-pa55word-for-tests"


@pytest.fixture(scope="module")
def tls_sentinel(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[SentinelLayout, Tls]]:
    pki = tmp_path_factory.mktemp("pki")
    ca = make_ca(pki)
    cert, key = issue_cert(pki, ca, "redis", "DNS:localhost,IP:127.0.0.1")
    tls = Tls(ca[0], cert, key)
    with SentinelLayout(tmp_path_factory.mktemp("tls-sentinel"), tls=tls,
                        sentinel_password=SENTINEL_PASSWORD).start() as layout:
        yield layout, tls


def settings(layout: SentinelLayout, ca: str, password: str = SENTINEL_PASSWORD
             ) -> StoreSettings:
    return StoreSettings(redis_url="rediss://sentinel-managed/0", redis_ca_file=ca,
                         redis_sentinels=tuple(layout.sentinel_addresses),
                         redis_sentinel_service=layout.service,
                         redis_sentinel_password=password, key_prefix="mf-ha-tls")


def test_store_through_sentinels_over_tls(tls_sentinel: tuple[SentinelLayout, Tls]) -> None:
    layout, tls = tls_sentinel
    writer = RedisHashStore(settings(layout, str(tls.ca)))
    watcher = RedisHashStore(settings(layout, str(tls.ca)))
    try:
        assert watcher.wait_for_change(0.1)
        report = writer.import_list("l", "t", batches_from_entries(
            IndexEntry("", "sha1", f"{i:040x}", ()) for i in range(1, 20)), replace=True)
        assert report.committed and watcher.wait_for_change(5)
        assert len(watcher.load_index()) == 19
        assert SENTINEL_PASSWORD not in writer.location
    finally:
        writer.purge()
        writer.close()
        watcher.close()


@pytest.mark.parametrize("case", ["no-ca", "wrong-sentinel-password"])
def test_what_does_not_verify_or_authenticate_is_refused(
        tls_sentinel: tuple[SentinelLayout, Tls], case: str) -> None:
    layout, tls = tls_sentinel
    chosen = settings(layout, "") if case == "no-ca" \
        else settings(layout, str(tls.ca), "not-the-password")
    store = RedisHashStore(chosen)
    try:
        with pytest.raises(TemporaryFailure) as info:
            store.version()
    finally:
        store.close()
    text = str(info.value)
    assert SENTINEL_PASSWORD not in text and "not-the-password" not in text
    if case == "no-ca":
        assert "certificate verify failed" in text, text
    else:
        assert "No master found" in text and ("WRONGPASS" in text or "invalid" in text
                                              or "Authentication" in text), text
