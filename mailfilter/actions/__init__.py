"""The act stage: what happens to a message once its verdict is decided. Relaying it to the
next hop, holding it durably in the quarantine, reporting it; with the services the
operator's commands use on the quarantine. Does I/O (network, disk)."""
