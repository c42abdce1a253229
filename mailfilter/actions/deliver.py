"""Sending a message of our own through the next hop: report mail, and released messages.

Both go through the same `RelayPool` as relayed mail (STARTTLS, timeouts and parameter
handling as configured in `[smtp]`), with no XFORWARD: the next hop sees mailfilter as the
client, which is what it is for these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from mailfilter.actions.relay import NextHopUnavailable, RelayPool
from mailfilter.model import Reply

__all__ = ["Delivery", "deliver", "release_params", "released_message"]

RELEASED_HEADER: Final = "X-Mailfilter-Released"
_ACTOR_RE: Final = re.compile(r"^[\w.@+\- ]{1,64}$")


@dataclass
class Delivery:
    """What the next hop said: recipients it accepted, those it refused (with its reply),
    and its answer to the message (None when it never got that far)."""

    accepted: list[str] = field(default_factory=list)
    refused: list[tuple[str, Reply]] = field(default_factory=list)
    reply: Reply | None = None

    @property
    def delivered(self) -> bool:
        return bool(self.accepted) and self.reply is not None and self.reply.positive

    def describe(self) -> str:
        parts = []
        if self.reply is not None:
            parts.append(f"next hop: {self.reply}")
        parts += [f"{addr}: {reply}" for addr, reply in self.refused]
        return "; ".join(parts) or "not sent"


async def deliver(pool: RelayPool, mail_from: str, mail_params: Sequence[str],
                  recipients: Sequence[tuple[str, Sequence[str]]], message: bytes
                  ) -> Delivery:
    """One transaction at the next hop. Recipients it refuses are listed in the result;
    the message is sent when it accepted at least one. NextHopUnavailable when it cannot
    be reached or the connection fails."""
    result = Delivery()
    txn = pool.begin({}, mail_from, list(mail_params))
    refusal = await txn.start()
    if refusal is not None:
        result.refused = [(addr, refusal) for addr, _ in recipients]
        return result
    try:
        for address, params in recipients:
            reply = await txn.rcpt(address, list(params))
            if reply.positive:
                result.accepted.append(address)
            else:
                result.refused.append((address, reply))
        if not result.accepted:
            txn.abort()
            return result
        result.reply = await txn.send(message)
    except NextHopUnavailable:
        txn.abort()
        raise
    return result


def valid_actor(name: str) -> bool:
    """Operator names end up in a header and in logs: letters, digits, `.@+-_` and
    spaces, at most 64 characters (no line breaks, nothing to inject)."""
    return bool(_ACTOR_RE.match(name))


def released_message(raw: bytes, by: str, when: str, entry_id: str) -> bytes:
    """The original message with one header prepended saying who released it, when, and
    which entry it was; every byte of the original follows unchanged."""
    if not valid_actor(by):
        raise ValueError(f"not a usable operator name: {by!r}")
    header = f"{RELEASED_HEADER}: by {by} at {when} (id {entry_id})\r\n"
    return header.encode("ascii") + raw


def release_params(mail_options: Sequence[str], size: int) -> list[str]:
    """The original MAIL FROM parameters for a release: SIZE restated for the message
    as sent (it grew by a header), everything else (BODY, SMTPUTF8, RET, ENVID) as
    given."""
    out = []
    for option in mail_options:
        if option.partition("=")[0].upper() == "SIZE":
            out.append(f"SIZE={size}")
        else:
            out.append(option)
    return out
