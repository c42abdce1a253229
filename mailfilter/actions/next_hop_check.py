"""Whether mail can go out through `[smtp] next_hop`: checked once at start-up and after a
SIGHUP that changed it (a warning in the log), and what /readyz says about it.

What an unreachable next hop costs depends on the placement:

- with the SMTP proxy (after-queue, before-queue), every clean message goes there: each is
  answered 451 4.4.1 until it answers, so /readyz is not ready (503);
- milter only, clean mail stays in the MTA; the next hop carries only mailfilter's own
  mail (report mail, `quarantine release`). Scanning and holding go on, and report mail
  waits in the durable outbox, so /readyz stays 200 with a warning line: a load balancer
  or an MTA that took the milter out of service for it would refuse (451) mail that is
  being filtered correctly, for the sake of mail that is not lost.

The start-up check reads the SMTP greeting (a listener that accepts and says nothing, or
says something other than 220, is as useless as none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Final

from mailfilter.settings import Settings, split_host_port

__all__ = ["WARN_MILTER", "WARN_PROXY", "next_hop_problem", "warn_if_unreachable"]

log = logging.getLogger("mailfilter.app")

CHECK_TIMEOUT: Final = 3.0  # seconds for connect + greeting
WARN_PROXY: Final = "clean mail is answered 451 4.4.1 until it answers"
WARN_MILTER: Final = ("report mail waits in the outbox and quarantine release fails until "
                      "it answers (milter placement: a loopback smtpd without milters, "
                      "docs/milter.md 'Reports and releases')")


async def next_hop_problem(next_hop: str, timeout: float = CHECK_TIMEOUT) -> str | None:
    """None when `next_hop` (host:port) greets with 220 within `timeout`; else why not."""
    host, port = split_host_port(next_hop)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"no connection within {timeout:g} s"
    except OSError as exc:
        return _why(exc)
    try:
        greeting = await asyncio.wait_for(reader.readline(), timeout)
        if not greeting:
            return "closed the connection without a greeting"
        if not greeting.startswith(b"220"):
            return f"greeted {greeting[:80].decode('latin-1').strip()!r}, not 220"
        with contextlib.suppress(OSError):
            writer.write(b"QUIT\r\n")
            await asyncio.wait_for(writer.drain(), timeout)
        return None
    except TimeoutError:
        return f"no greeting within {timeout:g} s"
    except OSError as exc:
        return _why(exc)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)


def _why(exc: OSError) -> str:
    # asyncio words a refused connect "Connect call failed (addr)": say what errno says
    return os.strerror(exc.errno) if exc.errno else str(exc)


async def warn_if_unreachable(settings: Settings) -> str | None:
    """Log a warning when the next hop does not answer, saying what that costs in this
    placement; the problem, or None."""
    problem = await next_hop_problem(settings.smtp.next_hop)
    if problem is not None:
        cost = WARN_PROXY if settings.smtp.listen else WARN_MILTER
        log.warning(f"next hop not reachable: {cost}", extra={"fields": {
            "next_hop": settings.smtp.next_hop, "error": problem}})
    return problem

