"""Every use of aiosmtpd's internals, in one place.

The proxy's session (`smtp.py`) is an aiosmtpd `SMTP` with its own command methods, and it
needs a few things aiosmtpd does not offer publicly: to refuse a client before the
greeting, to abort its next-hop transaction whenever aiosmtpd resets the SMTP state, to say
421 before an idle connection is closed, to restart or stretch the idle timer, to read
DATA from the stream itself (relayed exactly as received, in pieces, with a size limit)
and to write a line without waiting. Those rest on the private members listed in
`PRIVATE_MEMBERS`; this module is the only one that touches them (pinned `aiosmtpd<2`),
and `tests/proxy/test_aiosmtpd_adapter.py` checks each against the installed aiosmtpd, so
an upgrade that changes one fails there, by name, not somewhere in a message's handling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

from aiosmtpd.smtp import SMTP

__all__ = ["PRIVATE_MEMBERS", "SessionAdapter"]

# name -> what mailfilter relies on (the test checks the kind and signature of each).
PRIVATE_MEMBERS: Final = {
    "_handle_client": "async method without arguments: greets the client, then reads and "
                      "runs its commands; run once per connection from connection_made",
    "_set_rset_state": "method without arguments: resets the transaction state (RSET, "
                       "EHLO/HELO, a new connection, STARTTLS)",
    "_timeout_cb": "method without arguments: the idle timer fired; closes the transport",
    "_reset_timeout": "method (duration=None): restarts the idle timer, for `duration` "
                      "seconds or the session's timeout",
    "_reader": "instance attribute: the asyncio.StreamReader of the client's bytes",
    "_writer": "instance attribute: the asyncio.StreamWriter to the client",
    "_tls_protocol": "instance attribute: None until STARTTLS, then the TLS protocol",
    "__ident__": "instance attribute: the text of the greeting after the host name",
}

_HOOK_NAMES: dict[type, tuple[str, ...]] = {}  # session class -> its smtp_ and auth_ names


class SessionAdapter(SMTP):
    """aiosmtpd's `SMTP` with public names for the internals the proxy uses. Subclasses
    override `refused_before_greeting` and the `on_*` hooks, and call the other methods
    here; none of them touches a private member of aiosmtpd."""

    # --- hooks for the subclass ---------------------------------------------------------------

    async def refused_before_greeting(self) -> bool:
        """Called when a client connects, before the greeting: True when this method
        answered and closed the connection itself."""
        return False

    def on_reset(self) -> None:
        """aiosmtpd is about to reset the transaction state."""

    def on_idle_timeout(self) -> None:
        """The idle timer fired; the connection is closed after this returns."""

    # --- what the subclass calls ---------------------------------------------------------------

    def reset_state(self) -> None:
        """Reset the transaction state as RSET does (`on_reset` is called)."""
        self._set_rset_state()

    def restart_idle_timer(self, seconds: float | None = None) -> None:
        """The idle timer starts again: `seconds`, or the session's command timeout."""
        self._reset_timeout(seconds)

    def client_stream(self) -> asyncio.StreamReader:
        """The client's bytes, for reading DATA directly."""
        reader: asyncio.StreamReader = self._reader
        return reader

    def write_now(self, line: str) -> None:
        """Write a reply line without waiting for the buffer to drain (from a callback, or
        just before closing)."""
        self._writer.write(f"{line}\r\n".encode())

    def tls_started(self) -> bool:
        return self._tls_protocol is not None

    def greeting_text(self) -> str:
        """What follows the host name in the 220 greeting."""
        return str(self.__ident__)

    # --- aiosmtpd's side ----------------------------------------------------------------------

    def __dir__(self) -> Iterable[str]:
        # aiosmtpd looks at every attribute of each new session (inspect.getmembers for
        # its auth_ methods, dir() for its smtp_ methods): ~70 us a connection for the
        # ~150 names. Those two kinds are all it looks for.
        cls = type(self)
        names = _HOOK_NAMES.get(cls)
        if names is None:
            names = _HOOK_NAMES[cls] = tuple(
                n for n in dir(cls) if n.startswith(("smtp_", "auth_")))
        return names

    async def _handle_client(self) -> None:
        if await self.refused_before_greeting():
            return
        await super()._handle_client()

    def _set_rset_state(self) -> None:
        self.on_reset()
        super()._set_rset_state()  # type: ignore[no-untyped-call]

    def _timeout_cb(self) -> None:
        self.on_idle_timeout()
        super()._timeout_cb()  # type: ignore[no-untyped-call]
