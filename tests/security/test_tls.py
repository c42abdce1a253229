"""STARTTLS to the next hop, verified by default (tests/proxy/test_tls.py has the basics:
STARTTLS offered to clients, `required` without STARTTLS at the next hop, a self-signed
certificate refused). Here: a certificate from a CA the system trusts is accepted and used;
one for another name is refused; and after any refusal not a single envelope command went
to the next hop, in the clear or otherwise."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import free_port
from factories import message, message_bytes
from faults.redis_server import issue_cert, make_ca
from proxy.proxy_harness import RunningProxy, self_signed_cert

Factory = Callable[..., RunningProxy]


@dataclass
class TlsSink:
    """An aiosmtpd next hop offering STARTTLS (not requiring it) that records every
    envelope command it is given and whether the session was encrypted then."""

    address: str
    commands: list[tuple[str, bool]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Recorder:
    def __init__(self, sink: TlsSink) -> None:
        self.sink = sink

    def _note(self, what: str, session: Session) -> None:
        with self.sink.lock:
            self.sink.commands.append((what, session.ssl is not None))

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,  # noqa: N802
                          address: str, options: list[str]) -> str:
        self._note(f"MAIL {address}", session)
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,  # noqa: N802
                          address: str, options: list[str]) -> str:
        self._note(f"RCPT {address}", session)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session,  # noqa: N802
                          envelope: Envelope) -> str:
        self._note("DATA", session)
        with self.sink.lock:
            self.sink.messages.append(bytes(envelope.original_content or b""))
        return "250 2.0.0 Ok"


@contextlib.contextmanager
def tls_sink(cert: tuple[Path, Path]) -> Iterator[TlsSink]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    port = free_port()
    sink = TlsSink(f"127.0.0.1:{port}")
    controller = Controller(_Recorder(sink), hostname="127.0.0.1", port=port,
                            tls_context=context, decode_data=False)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    return {
        "ca": ca,
        "good": issue_cert(directory, ca, "next-hop", "DNS:localhost,IP:127.0.0.1"),
        "wrong-name": issue_cert(directory, ca, "elsewhere", "DNS:other.example"),
        "self-signed": self_signed_cert(directory, "localhost"),
    }


def _send(p: RunningProxy) -> str:
    import smtplib

    with smtplib.SMTP(p.host, p.port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("alice@example.org")
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = client.rcpt("bob@example.net")
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = client.data(message_bytes(message(subject="tls")))
        return f"{code} {text.decode()}"


@pytest.mark.parametrize("mode", ["opportunistic", "required"])
def test_certificate_from_a_trusted_ca_is_verified_and_used(
        proxy_factory: Factory, pki: dict[str, tuple[Path, Path]], mode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The system's trust store, as OpenSSL reads it, with our test CA in it.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"][0]))
    with tls_sink(pki["good"]) as sink:
        p = proxy_factory(sink.address, smtp={"next_hop_starttls": mode,
                                              "next_hop_verify": True})
        reply = _send(p)
        assert reply.startswith("250"), reply
        assert len(sink.messages) == 1
        assert sink.commands and all(tls for _, tls in sink.commands), sink.commands


@pytest.mark.parametrize("cert", ["wrong-name", "self-signed"])
@pytest.mark.parametrize("mode", ["opportunistic", "required"])
def test_certificate_that_does_not_verify_is_refused_never_skipped(
        proxy_factory: Factory, pki: dict[str, tuple[Path, Path]], cert: str, mode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"][0]))
    with tls_sink(pki[cert]) as sink:
        p = proxy_factory(sink.address, smtp={"next_hop_starttls": mode,
                                              "next_hop_verify": True})
        reply = _send(p)
        assert reply.startswith("451 4.4.1"), reply
        assert sink.commands == [] and sink.messages == []  # not even MAIL, in any form
