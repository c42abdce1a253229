"""The quarantine index two instances share in the real Redis: `list` anywhere shows every
instance's entries with the host that holds them, commands on the wrong instance say
where an entry lives, operator changes follow, `reindex` rebuilds it, and a dead Redis
only makes `list` fall back to the local directory."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from proxy.proxy_harness import free_port

from mailfilter.actions.quarantine import QuarantineStore
from mailfilter.actions.quarantine_index import QuarantineIndex
from mailfilter.redis_connection import KeyLayout
from mailfilter.settings import QuarantineSettings
from quarantine.quarantine_harness import (
    ReportingProxy,
    json_lines,
    known_message,
    mf,
    send,
    write_config,
)


def instance_config(tmp_path: Path, name: str, redis_url: str, prefix: str) -> Path:
    return write_config(tmp_path / f"{name}.toml", f"""
[smtp]
next_hop = "127.0.0.1:{free_port()}"
[store]
path = "{tmp_path / 'store'}"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
[quarantine]
path = "{tmp_path / ('quarantine' if name == 'mx-a' else name)}"
instance_name = "{name}"
""")


def test_hash_tag_is_the_hash_stores() -> None:
    for prefix in ("mailfilter", "mf:{prod}:x", "a{b"):
        key = QuarantineIndex(redis.Redis(), prefix).key
        assert key.startswith(KeyLayout(prefix).tag + ":")


@pytest.mark.slow  # two serve instances and commands: about 14 s
def test_every_instance_sees_every_entry_and_is_told_where_it_lives(
        reporting_proxy: Any, smtp_sink: Any, tmp_path: Path, redis_url: str,
        redis_prefix: str) -> None:
    rp: ReportingProxy = reporting_proxy(
        smtp_sink.address, store={"redis_url": redis_url, "key_prefix": redis_prefix},
        quarantine={"instance_name": "mx-a"})
    assert send(rp.proxy, known_message())[0] == 250
    [entry] = rp.wait_reported()
    a = instance_config(tmp_path, "mx-a", redis_url, redis_prefix)
    b = instance_config(tmp_path, "mx-b", redis_url, redis_prefix)

    for config in (a, b):
        rows = json_lines(mf("quarantine", "list", "--json", "--config", str(config)).stdout)
        assert [(r["id"], r["host"]) for r in rows] == [(entry.id, "mx-a")]
    out = mf("quarantine", "list", "--config", str(b))
    assert "mx-a" in out.stdout.splitlines()[1]
    for command in (["show", entry.id], ["release", entry.id, "--yes"],
                    ["delete", entry.id, "--yes"], ["export", entry.id, "--to", "x.eml"]):
        out = mf("quarantine", *command, "--config", str(b))
        assert out.returncode == 1, command
        assert f"{entry.id} is held by instance mx-a" in out.stderr
        assert "run the command there" in out.stderr

    # An operator's change on the holding instance shows everywhere.
    assert mf("quarantine", "hold", entry.id, "--config", str(a)).returncode == 0
    rows = json_lines(mf("quarantine", "list", "--held", "--json", "--config", str(b)).stdout)
    assert [r["id"] for r in rows] == [entry.id]

    # The index lost (flushed, a new Redis): reindex rebuilds this instance's part.
    client = redis.Redis.from_url(redis_url)
    key = KeyLayout(redis_prefix).quarantine
    stale = {"id": "7ZZZZZZZZZZZZZZZ", "host": "mx-a", "received_ts": 1}
    client.delete(key)
    client.hset(key, stale["id"], json.dumps(stale))
    assert json_lines(mf("quarantine", "list", "--json", "--config", str(b)).stdout) == [stale]
    out = mf("quarantine", "reindex", "--config", str(a))
    assert out.returncode == 0, out.stderr
    assert "1 entries of mx-a written, 1 stale ones removed" in out.stdout
    rows = json_lines(mf("quarantine", "list", "--json", "--config", str(b)).stdout)
    assert [(r["id"], r["host"], r["legal_hold"]) for r in rows] == [(entry.id, "mx-a", True)]
    client.close()

    # Purged on its instance: gone from the index too.
    assert mf("quarantine", "unhold", entry.id, "--config", str(a)).returncode == 0
    purge = write_config(tmp_path / "purge.toml", a.read_text().replace(
        'instance_name = "mx-a"', 'instance_name = "mx-a"\nretention_days = 1'))
    store = QuarantineStore(QuarantineSettings(path=tmp_path / "quarantine",
                                               instance_name="mx-a"))
    store.update(entry.id, lambda r: dataclasses.replace(r, received_ts=time.time() - 3 * 86400))
    assert json.loads(mf("quarantine", "purge", "--json", "--config",
                         str(purge)).stdout)["purged"] == [entry.id]
    assert json_lines(mf("quarantine", "list", "--json", "--config", str(b)).stdout) == []


def test_list_falls_back_to_the_directory_when_redis_is_down(
        reporting_proxy: Any, smtp_sink: Any, tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    rp: ReportingProxy = reporting_proxy(
        smtp_sink.address, store={"redis_url": dead, "key_prefix": "mfdown"},
        quarantine={"instance_name": "mx-a"}, report={"retry_min": "10s"})
    assert send(rp.proxy, known_message())[0] == 250
    [entry] = rp.entries()
    config = instance_config(tmp_path, "mx-a", dead, "mfdown")
    out = mf("quarantine", "list", "--json", "--config", str(config))
    assert out.returncode == 0
    assert [r["id"] for r in json_lines(out.stdout)] == [entry.id]
    assert "quarantine index not reachable" in out.stderr
    assert json_lines(out.stdout)[0]["report_pending"] is True  # the index update waits
    out = mf("quarantine", "hold", entry.id, "--config", str(config))
    assert out.returncode == 0 and "the service will retry it" in out.stderr
    steps = sorted(tuple(j.steps) for j in rp.store.jobs())
    assert steps == [("index",), ("index",)]
    out = mf("quarantine", "reindex", "--config", str(config))
    assert out.returncode == 2 and "quarantine index not reachable" in out.stderr
