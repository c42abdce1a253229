"""STARTTLS on both sides, over real sockets: offered to clients only when a certificate
is configured, and to the next hop per `next_hop_starttls` / `next_hop_verify`, never
falling back to plaintext when TLS is required or the certificate is refused."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import SmtpSink, running_smtp_sink
from factories import message, message_bytes

from proxy.proxy_harness import RawClient, RecordingSink, RunningProxy, self_signed_cert

Factory = Callable[..., RunningProxy]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    return context


@pytest.fixture
def tls_sink(cert: tuple[Path, Path]) -> Iterator[SmtpSink]:
    with running_smtp_sink(server_context(cert)) as sink:
        yield sink


def _client_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert[0]))
    context.check_hostname = False  # the proxy listens on 127.0.0.1
    return context


def test_starttls_offered_and_used_by_a_client(proxy_factory: Factory, smtp_sink: SmtpSink,
                                               cert: tuple[Path, Path]) -> None:
    p = proxy_factory(smtp_sink.address,
                      smtp={"tls_cert": str(cert[0]), "tls_key": str(cert[1])})
    raw = message_bytes(message(subject="over tls"))
    with smtplib.SMTP(p.host, p.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=_client_context(cert))
        assert code == 220
        code, lines = client.ehlo("client.test")  # a fresh session after the upgrade
        assert code == 250 and b"STARTTLS" not in lines
        assert client.sock is not None and isinstance(client.sock, ssl.SSLSocket)
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        code, text = client.data(raw)
    assert code == 250, text
    [got] = smtp_sink.wait_for(1)
    assert got.data == b"X-Mailfilter: clean\r\n" + raw


def test_envelope_before_starttls_is_forgotten(proxy_factory: Factory,
                                               recording_sink: RecordingSink,
                                               cert: tuple[Path, Path]) -> None:
    """RFC 3207 4.2: nothing said in plaintext survives the upgrade."""
    p = proxy_factory(recording_sink.address,
                      smtp={"tls_cert": str(cert[0]), "tls_key": str(cert[1])})
    with smtplib.SMTP(p.host, p.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("plain@example.org")[0] == 250
        client.starttls(context=_client_context(cert))
        client.ehlo("client.test")
        assert client.rcpt("bob@example.net")[0] == 503  # no MAIL in this session
    assert recording_sink.messages == []


def test_no_starttls_without_a_certificate(proxy_factory: Factory,
                                           recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address)
    c = RawClient(p.host, p.port)
    assert "STARTTLS" not in c.cmd("EHLO client.test")
    assert c.cmd("STARTTLS").startswith("454")
    assert c.cmd("NOOP").startswith("250")  # still a plaintext session
    c.close()


def _send(p: RunningProxy) -> tuple[int, bytes]:
    """(code, text) of the first refusal, or of the DATA reply."""
    with smtplib.SMTP(p.host, p.port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("alice@example.org")
        if code != 250:
            return code, text
        client.rcpt("bob@example.net")
        return client.data(message_bytes(message(subject="to the next hop")))


def test_next_hop_starttls_required_but_not_offered(proxy_factory: Factory,
                                                    recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address, smtp={"next_hop_starttls": "required"})
    code, text = _send(p)
    assert (code, text[:5]) == (451, b"4.4.1")
    # the envelope never went out in plaintext
    assert not any(c.split(" ")[0].upper() in ("MAIL", "RCPT", "DATA", "XFORWARD")
                   for c in recording_sink.commands), recording_sink.commands
    assert recording_sink.messages == []


@pytest.mark.parametrize("mode", ["opportunistic", "required"])
def test_next_hop_starttls_used_when_offered(proxy_factory: Factory, tls_sink: SmtpSink,
                                             mode: str) -> None:
    p = proxy_factory(tls_sink.address,
                      smtp={"next_hop_starttls": mode, "next_hop_verify": False})
    code, text = _send(p)
    assert code == 250, text
    [got] = tls_sink.wait_for(1)
    assert got.tls


def test_next_hop_certificate_verified(proxy_factory: Factory, tls_sink: SmtpSink) -> None:
    """A certificate that does not verify is refused, not used and not skipped: 451."""
    p = proxy_factory(tls_sink.address,
                      smtp={"next_hop_starttls": "opportunistic", "next_hop_verify": True})
    code, text = _send(p)
    assert (code, text[:5]) == (451, b"4.4.1")
    assert tls_sink.messages == []
