"""With a real Postfix: a private instance (its own config, queue and data directories)
with mailfilter as its after-queue content filter, the reinjection smtpd as mailfilter's
next hop, and a recording sink as Postfix's relayhost (postfix_harness.py). Mail is sent
with swaks.

Skipped when Postfix is not installed, unless CI is set (then it fails)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.postfix_harness import (
    Instance,
    arrived,
    postfix_instance,
    require_postfix,
    start_proxy,
    stop_proxy,
    wait_until,
)
from proxy.proxy_harness import KNOWN

pytestmark = pytest.mark.postfix
require_postfix()


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    with postfix_instance("after-queue") as inst:
        yield inst


@pytest.fixture
def proxy(instance: Instance, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_proxy(instance, tmp_path)
    yield proc
    stop_proxy(proc)


def test_clean_message_reaches_the_sink(instance: Instance, proxy: object,
                                        tmp_path: Path) -> None:
    run = instance.swaks("--to", "bob@example.net", "--header", "Subject: clean-one")
    assert run.returncode == 0, run.stdout + run.stderr
    assert wait_until(lambda: arrived(instance.sink, b"clean-one")), instance.maillog()
    [data] = arrived(instance.sink, b"clean-one")
    assert b"X-Mailfilter: clean\r\n" in data
    log = (tmp_path / "serve.log").read_text()
    # Postfix forwarded the original client (XFORWARD) and its queue id
    assert "client=127.0.0.1" in log and "queue_id=" in log and "queue_id=null" not in log


def test_matching_message_is_quarantined(instance: Instance, proxy: object,
                                         tmp_path: Path) -> None:
    image = tmp_path / "holiday.jpg"
    image.write_bytes(KNOWN)
    run = instance.swaks("--to", "bob@example.net", "--header", "Subject: match-one",
                         "--attach-type", "image/jpeg", "--attach", f"@{image}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert wait_until(lambda: list((tmp_path / "quarantine").glob("*/*.json"))), \
        instance.maillog()
    [record] = (tmp_path / "quarantine").glob("*/*.json")
    meta = json.loads(record.read_text())
    assert meta["subject"] == "match-one" and meta["verdict"] == "match"
    assert meta["queue_id"]  # Postfix's queue id, from XFORWARD IDENT
    assert wait_until(lambda: "status=sent" in instance.maillog() and not instance.queue(), 10)
    assert not arrived(instance.sink, b"match-one")


def test_mail_waits_in_postfix_while_the_filter_is_down(instance: Instance,
                                                        tmp_path: Path) -> None:
    # The filter is down: nothing may listen on its port (the earlier tests' proxies are
    # stopped), else Postfix would deliver instead of deferring.
    with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", instance.filter_port), 1):
        pytest.fail(f"something listens on the filter port {instance.filter_port}")
    run = instance.swaks("--to", "bob@example.net", "--header", "Subject: deferred-one")
    assert run.returncode == 0, run.stdout + run.stderr
    assert wait_until(lambda: any(q.get("queue_name") == "deferred"
                                  for q in instance.queue())), instance.maillog()
    assert not arrived(instance.sink, b"deferred-one")
    proc = start_proxy(instance, tmp_path)
    try:
        instance.flush()
        assert wait_until(lambda: arrived(instance.sink, b"deferred-one")), instance.maillog()
        assert wait_until(lambda: not instance.queue(), 10)
        assert len(arrived(instance.sink, b"deferred-one")) == 1
    finally:
        stop_proxy(proc)
