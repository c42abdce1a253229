"""aiosmtpd's private members that the proxy relies on, checked against the installed
aiosmtpd (mailfilter/frontend/aiosmtpd_adapter.py is the one module that uses them). An
aiosmtpd upgrade that removes or changes one fails here, naming it."""

from __future__ import annotations

import asyncio
import inspect
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP

from mailfilter.frontend import aiosmtpd_adapter
from mailfilter.frontend.aiosmtpd_adapter import PRIVATE_MEMBERS, SessionAdapter
from mailfilter.frontend.smtp import ProxyLMTPSession, ProxySession
from proxy.proxy_harness import self_signed_cert

PACKAGE = Path(aiosmtpd_adapter.__file__).resolve().parent.parent

# What the adapter needs of each: (async?, parameter names after self), or None for an
# instance attribute (checked on a live session below).
EXPECTED: dict[str, tuple[bool, tuple[str, ...]] | None] = {
    "_handle_client": (True, ()),
    "_set_rset_state": (False, ()),
    "_timeout_cb": (False, ()),
    "_reset_timeout": (False, ("duration",)),
    "_reader": None,
    "_writer": None,
    "_tls_protocol": None,
    "__ident__": None,
}


def _changed(name: str, what: str) -> str:
    return (f"aiosmtpd {aiosmtpd.__version__}: SMTP.{name} {what}. "
            f"mailfilter/frontend/aiosmtpd_adapter.py relies on it ({PRIVATE_MEMBERS[name]}): "
            "adapt the adapter to this aiosmtpd before allowing it in pyproject.toml.")


def test_the_list_is_the_adapters() -> None:
    assert set(EXPECTED) == set(PRIVATE_MEMBERS), (
        "aiosmtpd_adapter.PRIVATE_MEMBERS and this test's list differ: add the member's "
        "expected kind here")


@pytest.mark.parametrize("name", [n for n, kind in EXPECTED.items() if kind is not None])
def test_private_methods_are_still_there(name: str) -> None:
    expected = EXPECTED[name]
    assert expected is not None
    is_async, params = expected
    member = getattr(SMTP, name, None)
    assert member is not None, _changed(name, "is gone")
    assert callable(member), _changed(name, "is no longer a method")
    assert inspect.iscoroutinefunction(member) == is_async, _changed(
        name, "is now async" if not is_async else "is no longer async")
    got = tuple(inspect.signature(member).parameters)[1:]
    assert got == params, _changed(name, f"takes {got} now, not {params}")


def test_only_the_adapter_uses_aiosmtpd_internals() -> None:
    """No other module of the package names one of the members; the adapter names no
    private member of aiosmtpd's SMTP beyond the list; no session class of ours shadows a
    private member of SMTP by accident (our own `_name` methods included)."""
    names = "|".join(re.escape(n) for n in PRIVATE_MEMBERS)
    pattern = re.compile(rf"\.(?:{names})\b")
    for path in PACKAGE.rglob("*.py"):
        if path.name == "aiosmtpd_adapter.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "aiosmtpd" in text or "SessionAdapter" in text or "ProxySession" in text:
            assert not pattern.search(text), f"{path}: uses an aiosmtpd private member"
    source = Path(aiosmtpd_adapter.__file__).read_text(encoding="utf-8")
    smtp_private = {n for n in dir(SMTP) if n.startswith("_") and not n.startswith("__")}
    used = set(re.findall(r"\.(_[A-Za-z]\w*)", source)) & smtp_private
    assert used <= set(PRIVATE_MEMBERS), f"unlisted: {used - set(PRIVATE_MEMBERS)}"
    for cls in (ProxySession, ProxyLMTPSession):
        shadowed = {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")
                    } & smtp_private
        assert not shadowed, f"{cls.__name__} overrides aiosmtpd's private {shadowed}"


# --- a live session -----------------------------------------------------------------------


class _Probe(SessionAdapter):
    refuse = False
    sessions: list[_Probe] = []  # noqa: RUF012 (the test's record)

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.resets = 0
        self.idle_fired = False
        super().__init__(object(), hostname="probe.test", ident="ESMTP probe",
                         tls_context=tls, timeout=30, loop=asyncio.get_running_loop())
        _Probe.sessions.append(self)

    async def refused_before_greeting(self) -> bool:
        if not self.refuse:
            return False
        self.write_now("554 5.7.1 go away")
        assert self.transport is not None
        self.transport.close()
        return True

    def on_reset(self) -> None:
        self.resets += 1

    def on_idle_timeout(self) -> None:
        self.idle_fired = True
        self.write_now("421 4.4.2 idle")

    async def smtp_NOOP(self, arg: str | None) -> None:  # noqa: N802
        self.reset_state()
        await self.push(f"250 ident={self.greeting_text()} tls={self.tls_started()}")

    async def smtp_DATA(self, arg: str | None) -> None:  # noqa: N802
        await self.push("354 go on")
        line = await self.client_stream().readuntil(b"\r\n")
        await self.push(f"250 read {line.strip().decode()}")

    async def smtp_IDLE(self, arg: str | None) -> None:  # noqa: N802
        self.restart_idle_timer(0.2)
        await self.push("250 idle timer at 0.2 s")


@pytest.fixture
async def probe_port(tmp_path: Path) -> AsyncIterator[int]:
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    _Probe.sessions.clear()
    _Probe.refuse = False
    server = await asyncio.get_running_loop().create_server(
        lambda: _Probe(tls), "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def _reply(reader: asyncio.StreamReader) -> str:
    lines = []
    while True:
        line = (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)


async def test_the_adapter_on_a_live_aiosmtpd_session(probe_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", probe_port)
    assert await _reply(reader) == "220 probe.test ESMTP probe"
    [session] = _Probe.sessions
    assert isinstance(getattr(session, "_reader", None), asyncio.StreamReader), \
        _changed("_reader", "is not the session's StreamReader")
    assert isinstance(getattr(session, "_writer", None), asyncio.StreamWriter), \
        _changed("_writer", "is not the session's StreamWriter")
    assert hasattr(session, "_tls_protocol"), _changed("_tls_protocol", "is gone")
    assert getattr(session, "__ident__", None) == "ESMTP probe", \
        _changed("__ident__", "does not hold the ident")
    resets = session.resets
    assert resets >= 1, _changed("_set_rset_state", "is not called for a new connection")
    writer.write(b"NOOP\r\n")
    assert await _reply(reader) == "250 ident=ESMTP probe tls=False"
    assert session.resets == resets + 1
    writer.write(b"EHLO client.test\r\n")
    assert (await _reply(reader)).startswith("250")
    assert session.resets == resets + 2, _changed("_set_rset_state", "is not called by EHLO")
    writer.write(b"DATA\r\n")
    assert await _reply(reader) == "354 go on"
    writer.write(b"straight from the stream\r\n")
    assert await _reply(reader) == "250 read straight from the stream"
    writer.write(b"STARTTLS\r\n")
    assert (await _reply(reader)).startswith("220")
    client_tls = ssl.create_default_context()
    client_tls.check_hostname = False
    client_tls.verify_mode = ssl.CERT_NONE
    await writer.start_tls(client_tls)
    writer.write(b"NOOP\r\n")
    assert await _reply(reader) == "250 ident=ESMTP probe tls=True", \
        _changed("_tls_protocol", "is not set by STARTTLS")
    writer.write(b"IDLE\r\n")
    assert await _reply(reader) == "250 idle timer at 0.2 s"
    assert await _reply(reader) == "421 4.4.2 idle", _changed("_timeout_cb", "is not called")
    assert await asyncio.wait_for(reader.read(), 10) == b"", \
        _changed("_timeout_cb", "does not close the connection")
    assert session.idle_fired
    writer.close()


async def test_a_connection_refused_before_the_greeting(probe_port: int) -> None:
    _Probe.refuse = True
    reader, writer = await asyncio.open_connection("127.0.0.1", probe_port)
    assert await _reply(reader) == "554 5.7.1 go away", \
        _changed("_handle_client", "does not run first on a new connection")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
