"""Who may connect to a front end: `[smtp] allowed_clients`, shared by the SMTP proxy and
the milter's inet listener (a filter that accepts anyone is an open relay, or lets anyone
decide what the MTA does with mail)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["AllowedClients"]


class AllowedClients:
    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(v, strict=False) for v in networks]

    def allows(self, host: str | None) -> bool:
        """Whether a peer address (as the socket gives it; an IPv6 scope and the IPv4
        address inside an IPv4-mapped IPv6 address are understood) is in the networks."""
        try:
            addr = ipaddress.ip_address((host or "").split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._networks)
