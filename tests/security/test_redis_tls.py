"""Redis over TLS with ACL credentials: a private `redis-server` that speaks only TLS (its
certificate from a test CA) and knows only an ACL user with a password (the default user
off). The store, the verdict cache and `mailfilter serve` work through
`rediss://user:password@host:port` with `store.redis_ca_file`; the certificate is verified
(no CA, or a certificate for another name: refused), and errors never show the password."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.client import deliver, make_message
from faults.ledger import Ledger, account, read_quarantine
from faults.redis_server import RedisServer, issue_cert, make_ca
from faults.serve import serving
from proxy.proxy_harness import running_sink

from mailfilter.errors import TemporaryFailure
from mailfilter.matching.cache import RedisVerdictCache
from mailfilter.matching.store_redis import RedisHashStore
from mailfilter.model import ExactHashes, ImageFingerprint
from mailfilter.redis_connection import redis_client
from mailfilter.settings import StoreSettings

USER, PASSWORD = "mailfilter", "Acl-pa55word-for-tests"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("redis-pki")
    ca = make_ca(directory)
    return {"ca": ca,
            "good": issue_cert(directory, ca, "redis", "DNS:localhost,IP:127.0.0.1"),
            "wrong-name": issue_cert(directory, ca, "elsewhere", "DNS:other.example")}


def _tls_redis(directory: Path, ca: Path, cert: tuple[Path, Path]) -> RedisServer:
    return RedisServer(directory, tls=True, args=[
        "--tls-cert-file", str(cert[0]), "--tls-key-file", str(cert[1]),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
        "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
        "--user", "default", "off",
    ]).start()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory,
              pki: dict[str, tuple[Path, Path]]) -> Iterator[RedisServer]:
    server = _tls_redis(tmp_path_factory.mktemp("redis-tls"), pki["ca"][0], pki["good"])
    try:
        yield server
    finally:
        server.kill()


def _url(server: RedisServer, password: str = PASSWORD) -> str:
    return f"rediss://{USER}:{password}@127.0.0.1:{server.port}/0"


def test_store_and_cache_over_tls_with_acl(tls_redis: RedisServer,
                                           pki: dict[str, tuple[Path, Path]]) -> None:
    settings = StoreSettings(redis_url=_url(tls_redis), redis_ca_file=str(pki["ca"][0]),
                             key_prefix="mf-tls")
    store = RedisHashStore(settings)
    try:
        assert store.version() >= 0
        assert len(store.load_index()) >= 0
        assert PASSWORD not in store.location
    finally:
        store.close()
    cache = RedisVerdictCache(settings, namespace="t")
    try:
        fp = ImageFingerprint(exact=ExactHashes(md5="0" * 32, sha1="0" * 40, sha256="a" * 64))
        cache.put("a" * 64, 1, fp, ())
        hit = cache.get("a" * 64, 1)
        assert hit is not None and hit.fingerprint.exact.sha256 == "a" * 64
    finally:
        cache.close()


@pytest.mark.parametrize("case", ["no-ca", "wrong-password", "plaintext"])
def test_what_does_not_verify_or_authenticate_is_refused(
        tls_redis: RedisServer, pki: dict[str, tuple[Path, Path]], case: str) -> None:
    url = {"no-ca": _url(tls_redis),
           "wrong-password": _url(tls_redis, "not-the-password"),
           "plaintext": _url(tls_redis).replace("rediss://", "redis://")}[case]
    ca = "" if case == "no-ca" else str(pki["ca"][0])
    store = RedisHashStore(StoreSettings(redis_url=url, redis_ca_file=ca))
    try:
        with pytest.raises(TemporaryFailure) as info:
            store.version()
    finally:
        store.close()
    assert PASSWORD not in str(info.value) and "not-the-password" not in str(info.value)
    if case == "no-ca":
        assert "certificate verify failed" in str(info.value)


def test_certificate_for_another_name_is_refused(tmp_path: Path,
                                                 pki: dict[str, tuple[Path, Path]]) -> None:
    server = _tls_redis(tmp_path / "redis", pki["ca"][0], pki["wrong-name"])
    try:
        store = RedisHashStore(StoreSettings(redis_url=_url(server),
                                             redis_ca_file=str(pki["ca"][0])))
        with pytest.raises(TemporaryFailure) as info:
            store.version()
        store.close()
        assert "certificate" in str(info.value).lower() or "hostname" in str(info.value)
    finally:
        server.kill()


def test_serve_over_tls_with_acl(tmp_path: Path, tls_redis: RedisServer,
                                 pki: dict[str, tuple[Path, Path]]) -> None:
    env = {"MAILFILTER_STORE__REDIS_URL": _url(tls_redis),
           "MAILFILTER_STORE__REDIS_CA_FILE": str(pki["ca"][0]),
           "MAILFILTER_STORE__KEY_PREFIX": "mf-tls-serve"}
    with running_sink() as sink, serving(tmp_path, sink.address, env=env) as s:
        s.wait_log("hash lists loaded")
        ledger = Ledger()
        for kind in ("known", "photo", "text"):
            seq = ledger.new_seq()
            deliver(ledger, seq, make_message(seq, kind), "127.0.0.1", s.port)
        result = account(ledger, [m.data for m in sink.messages], read_quarantine(s.quarantine))
        result.assert_exact()
        assert (result.quarantined, result.delivered) == (1, 2)
        client = redis_client(StoreSettings(redis_url=env["MAILFILTER_STORE__REDIS_URL"],
                                            redis_ca_file=str(pki["ca"][0])))
        assert client.keys("{mf-tls-serve}:cache:*")  # the verdict cache went over TLS too
        client.close()
        assert s.terminate() == 0
        assert PASSWORD not in s.log_text()
