"""What the service needs from a network front end (the SMTP proxy, the milter), so that
`app.py` starts, reconfigures, drains and counts them all alike.

A front end owns its listener, its connections and its protocol; every message it takes
goes through the one `MessageHandler` (handling.py) the service gives it, so limits such as
`max_concurrent_messages` hold for the service as a whole, not per listener.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mailfilter.settings import Settings

__all__ = ["FrontEnd"]


class FrontEnd(Protocol):
    @property
    def name(self) -> str:
        """`smtp` or `milter`: in log lines, quarantine records and metrics."""
        ...

    @property
    def relays(self) -> bool:
        """Whether its mail goes on through the next hop (then the next hop's health is
        part of the service's readiness)."""
        ...

    async def start(self) -> None:
        """Listen."""
        ...

    def reconfigure(self, settings: Settings) -> None:
        """SIGHUP: new settings for the next connections and messages (the handler is
        reconfigured once, by the service)."""
        ...

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let messages in flight finish (up to `timeout`), close."""
        ...

    def connections(self) -> int:
        """Open connections now."""
        ...
