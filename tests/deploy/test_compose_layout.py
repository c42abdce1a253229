"""The compose layout run without containers (this machine cannot pull images): one real
Redis, the two mailfilter instances of deploy/docker/compose.yaml started with that file's
environment (only addresses and paths replaced), and a private Postfix with the Postfix
container's content filter and `scan` transport from deploy/docker/postfix/. As in the
containers, Postfix's filter destination is one name with both instances' addresses
(there Docker's DNS answers the network alias; here the scan transport runs chrooted
with its own etc/hosts), so Postfix spreads messages over both and fails over when one
stops."""

from __future__ import annotations

import contextlib
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import message, message_bytes
from proxy import postfix_harness as ph
from proxy.proxy_harness import KNOWN, free_port, running_sink

from deploy import compose_layout as layout
from deploy.serving import Served, mailfilter, purge_redis_keys, running, start, wait_until

ph.require_postfix()

ADDRESSES = {"mf1": "127.0.0.2", "mf2": "127.0.0.3"}
# What differs between the containers and this machine: where things listen and connect,
# where state lives, and one worker process per instance to keep the test quick.
REPLACED = {"MAILFILTER_STORE__REDIS_URL", "MAILFILTER_STORE__KEY_PREFIX",
            "MAILFILTER_SMTP__LISTEN", "MAILFILTER_SMTP__NEXT_HOP",
            "MAILFILTER_SMTP__ALLOWED_CLIENTS", "MAILFILTER_METRICS__LISTEN"}
ADDED = {"MAILFILTER_STORE__PATH", "MAILFILTER_QUARANTINE__PATH",
         "MAILFILTER_WORKERS__PROCESSES"}
HEALTHCHECK = layout.DOCKER / "healthcheck.py"


@contextlib.contextmanager
def postfix_in_front(filter_port: int, alias: str) -> Iterator[ph.Instance]:
    """A private Postfix whose content filter is the compose one: `[alias]:filter_port`,
    the `scan` transport of master.cf.append; `alias` resolves to both ADDRESSES."""
    transport, _, _ = layout.content_filter()
    master, replaced = re.subn(r"(?m)^scan\s.*\n(?:[ \t]+-o .*\n)*",
                               layout.scan_transport_block(chroot="y"), ph.MASTER_CF)
    assert replaced == 1, "the harness's master.cf has no scan transport to replace"
    tmp = Path(tempfile.mkdtemp(prefix="mailfilter-layout-"))
    try:
        tmp.chmod(0o755)  # Postfix's daemons (user postfix) must traverse it
        config_dir, queue, data = tmp / "etc", tmp / "queue", tmp / "data"
        for d in (config_dir, queue, data, queue / "etc"):
            d.mkdir()
        shutil.chown(data, "postfix")
        # The chrooted scan transport resolves names from these files only.
        (queue / "etc" / "hosts").write_text(
            "".join(f"{addr} {alias}\n" for addr in ADDRESSES.values()))
        (queue / "etc" / "nsswitch.conf").write_text("hosts: files\n")
        (queue / "etc" / "host.conf").write_text("multi on\n")
        with running_sink() as sink:
            inst = ph.Instance(config_dir, free_port(), filter_port, free_port(), sink, tmp,
                               "after-queue")
            (config_dir / "main.cf").write_text(
                ph.MAIN_CF.format(queue=queue, data=data, sink=sink.port, tmp=tmp)
                + f"content_filter = {transport}:[{alias}]:{filter_port}\n")
            (config_dir / "master.cf").write_text(master.format(
                smtpd=inst.smtpd_port, reinject=inst.reinject_port, public_options=""))
            with ph.started(inst):
                yield inst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def filter_env(name: str, tmp_path: Path, port: int, reinject: int, redis_url: str,
               prefix: str) -> dict[str, str]:
    env = layout.environment(name)
    local = {
        "MAILFILTER_STORE__REDIS_URL": redis_url,
        "MAILFILTER_STORE__KEY_PREFIX": prefix,
        "MAILFILTER_SMTP__LISTEN": f"{ADDRESSES[name]}:{port}",
        "MAILFILTER_SMTP__NEXT_HOP": f"127.0.0.1:{reinject}",
        "MAILFILTER_SMTP__ALLOWED_CLIENTS": '["127.0.0.0/8"]',
        "MAILFILTER_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
        "MAILFILTER_STORE__PATH": str(tmp_path / name / "state"),
        "MAILFILTER_QUARANTINE__PATH": str(tmp_path / name / "quarantine"),
        "MAILFILTER_WORKERS__PROCESSES": "1",
    }
    assert set(env) >= REPLACED, f"{name}: compose.yaml no longer sets {REPLACED - set(env)}"
    assert not ADDED & set(env), "compose.yaml sets a key this check replaces"
    return {**env, **local}


def send(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], raw)


def handled(inst: Served) -> float:
    return inst.value("mailfilter_messages_total")


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from deploy.serving import clean_environ

    return subprocess.run([sys.executable, str(HEALTHCHECK)], capture_output=True, text=True,
                          timeout=30, env={**clean_environ(), **env})


@pytest.mark.postfix
@pytest.mark.slow  # Postfix and two serve instances: about 11 s
def test_compose_layout_spreads_mail_over_both_filters_and_fails_over(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    _, alias, _ = layout.content_filter()
    port = free_port()  # the same port on both addresses, like 10025 in the containers
    with postfix_in_front(port, alias) as postfix:
        instances = [start(name, tmp_path / name,
                           filter_env(name, tmp_path, port, postfix.reinject_port,
                                      redis_url, redis_prefix))
                     for name in layout.FILTERS]
        try:
            with running(*instances) as (mf1, mf2):
                image = tmp_path / "stand-in.jpg"
                image.write_bytes(KNOWN)
                added = mailfilter("hashes", "add", "--config", str(mf1.config), "--list",
                                   "stand-ins", "--json", str(image), env=mf1.env)
                assert added.returncode == 0, added.stderr
                for inst in (mf1, mf2):
                    assert wait_until(lambda i=inst: i.value("mailfilter_index_entries") > 0,
                                      10.0) is not None

                clean = [message_bytes(message(subject=f"clean {i}")) for i in range(12)]
                hits = [message_bytes(message(subject=f"hit {i}", attachments=[
                    ("k.jpg", "image/jpeg", KNOWN)])) for i in range(4)]
                for raw in clean + hits:
                    send(postfix.smtpd_port, raw)

                def delivered(prefix: str) -> int:
                    return len(ph.arrived(postfix.sink, prefix.encode()))

                assert wait_until(lambda: delivered("Subject: clean") == 12, 60.0, 0.1) \
                    is not None, postfix.maillog()[-3000:]
                assert wait_until(lambda: len(mf1.quarantined()) + len(mf2.quarantined())
                                  == 4, 30.0, 0.1) is not None
                assert delivered("Subject: hit") == 0
                counts = handled(mf1), handled(mf2)
                # Postfix shuffles the two addresses per delivery: 16 messages all on one
                # filter would happen once in 2**15 runs.
                assert sum(counts) == 16 and min(counts) > 0, counts
                for inst in (mf1, mf2):
                    for record in inst.quarantined():
                        assert record["queue_id"], "XFORWARD from the scan transport"
                assert healthcheck(mf2.env).returncode == 0

                # One filter stops: Postfix tries the other address at once.
                assert mf1.stop() == 0
                unhealthy = healthcheck(mf1.env)
                assert unhealthy.returncode == 1 and "unhealthy" in unhealthy.stdout
                before = handled(mf2)
                started = time.monotonic()
                for i in range(3):
                    send(postfix.smtpd_port, message_bytes(message(subject=f"failover {i}")))
                assert wait_until(lambda: delivered("Subject: failover") == 3, 30.0, 0.1) \
                    is not None, postfix.maillog()[-3000:]
                print(f"\n16 messages split {counts[0]:.0f}/{counts[1]:.0f} over mf1/mf2; "
                      f"with mf1 stopped 3 more delivered through mf2 in "
                      f"{time.monotonic() - started:.1f}s")
                assert handled(mf2) == before + 3
                assert not [q for q in postfix.queue() if q.get("queue_name") == "deferred"]
        finally:
            purge_redis_keys(redis_url, redis_prefix)
