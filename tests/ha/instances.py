"""Settings of `mailfilter serve` instances and commands on the HA layouts, as MAILFILTER_*
variables (the way containers are configured)."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.proxy_harness import free_port

from ha.servers import ClusterLayout, SentinelLayout


def store_env(layout: SentinelLayout | ClusterLayout, prefix: str) -> dict[str, str]:
    if isinstance(layout, SentinelLayout):
        return {
            "MAILFILTER_STORE__REDIS_URL": "redis://sentinel-managed/0",
            "MAILFILTER_STORE__REDIS_SENTINELS": json.dumps(layout.sentinel_addresses),
            "MAILFILTER_STORE__REDIS_SENTINEL_SERVICE": layout.service,
            "MAILFILTER_STORE__KEY_PREFIX": prefix,
        }
    return {"MAILFILTER_STORE__REDIS_URL": layout.url,
            "MAILFILTER_STORE__REDIS_CLUSTER": "true",
            # the URL's node may be the one killed: the command after the failover needs
            # another to start from
            "MAILFILTER_STORE__REDIS_CLUSTER_NODES": json.dumps(layout.other_nodes),
            "MAILFILTER_STORE__KEY_PREFIX": prefix}


def instance_env(store: dict[str, str], directory: Path, next_hop: str) -> dict[str, str]:
    return {
        **store,
        "MAILFILTER_STORE__RELOAD_INTERVAL": "60s",
        "MAILFILTER_STORE__PATH": str(directory / "state"),
        "MAILFILTER_QUARANTINE__PATH": str(directory / "quarantine"),
        "MAILFILTER_QUARANTINE__INSTANCE_NAME": f"instance-{directory.name}",
        "MAILFILTER_SMTP__LISTEN": f"127.0.0.1:{free_port()}",
        "MAILFILTER_SMTP__NEXT_HOP": next_hop,
        "MAILFILTER_SMTP__HOSTNAME": f"{directory.name}.test",
        "MAILFILTER_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
        "MAILFILTER_WORKERS__PROCESSES": "1",
        # the quarantine index is written through the outbox: retried soon after a failover
        "MAILFILTER_REPORT__RETRY_MIN": "1s",
        "MAILFILTER_REPORT__RETRY_MAX": "2s",
    }
