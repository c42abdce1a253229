"""With a real Postfix: a private instance with mailfilter as the before-queue proxy filter
of its public smtpd (`-o smtpd_proxy_filter=...`, postfix_harness.py), the reinjection
smtpd as mailfilter's next hop and a recording sink as Postfix's relayhost. The sending
client (swaks) gets mailfilter's verdict in the same SMTP session.

Skipped when Postfix is not installed, unless CI is set (then it fails)."""

from __future__ import annotations

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
    with postfix_instance("before-queue") as inst:
        yield inst


def test_clean_message_reaches_the_sink(instance: Instance, tmp_path: Path) -> None:
    proc = start_proxy(instance, tmp_path, sections='[policy]\non_match = "reject"\n')
    try:
        run = instance.swaks("--to", "bob@example.net", "--header", "Subject: bq-clean")
        assert run.returncode == 0, run.stdout + run.stderr
        assert wait_until(lambda: arrived(instance.sink, b"bq-clean")), instance.maillog()
        [data] = arrived(instance.sink, b"bq-clean")
        assert b"X-Mailfilter: clean\r\n" in data
        assert wait_until(lambda: not instance.queue(), 10)
    finally:
        stop_proxy(proc)
    log = (tmp_path / "serve.log").read_text()
    assert "client=127.0.0.1" in log  # the original client, from Postfix's XFORWARD


def test_match_refused_to_the_sending_client(instance: Instance, tmp_path: Path) -> None:
    image = tmp_path / "holiday.jpg"
    image.write_bytes(KNOWN)
    proc = start_proxy(instance, tmp_path, sections='[policy]\non_match = "reject"\n')
    try:
        run = instance.swaks("--to", "bob@example.net", "--header", "Subject: bq-match",
                             "--attach-type", "image/jpeg", "--attach", f"@{image}")
    finally:
        stop_proxy(proc)
    assert run.returncode != 0
    assert "<** 550 5.7.1" in run.stdout, run.stdout + run.stderr
    assert not instance.queue()  # refused, not queued: nothing to bounce later
    assert not arrived(instance.sink, b"bq-match")
    assert not list((tmp_path / "quarantine").glob("*/*.json"))
    assert "action=reject" in (tmp_path / "serve.log").read_text()


def test_filter_down_tempfails_the_client(instance: Instance) -> None:
    run = instance.swaks("--to", "bob@example.net", "--header", "Subject: bq-down")
    assert run.returncode != 0
    # Postfix connects to the filter when the first recipient arrives
    assert "<** 451 4.3.0" in run.stdout, run.stdout + run.stderr
    # the client keeps the message and retries: Postfix queued nothing of it (only its
    # own notice to the postmaster, from double-bounce@)
    assert not [q for q in instance.queue() if q.get("sender") == "alice@example.org"]
    assert not arrived(instance.sink, b"bq-down")
    assert "connect to proxy filter" in instance.maillog()


# --- behind postscreen: deploy/postfix/before-queue-postscreen.master.cf as written -------

POSTSCREEN_SNIPPET = (Path(__file__).resolve().parents[2] / "deploy" / "postfix"
                      / "before-queue-postscreen.master.cf")


def _postscreen_services() -> tuple[str, str]:
    """The snippet's public services and its reinjection smtpd, ports as placeholders and
    chroot off (the private instance has no chroot tree)."""
    lines = [line for line in POSTSCREEN_SNIPPET.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    services: list[str] = []
    for line in lines:
        if not line[0].isspace():
            fields = line.split()
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = "127.0.0.1:{smtpd}"
            elif fields[0] == "127.0.0.1:10026":
                fields[0] = "127.0.0.1:{reinject}"
            fields[4] = "n"  # chroot
            line = " ".join(fields)
        services.append(line.replace("127.0.0.1:10025", "127.0.0.1:{filter}"))
    text = "\n".join(services) + "\n"
    split = text.index("127.0.0.1:{reinject}")
    return text[:split], text[split:]


@pytest.fixture(scope="module")
def behind_postscreen() -> Iterator[Instance]:
    public, reinject = _postscreen_services()
    assert "postscreen" in public and "smtpd_proxy_filter=127.0.0.1:{filter}" in public
    with postfix_instance("before-queue", public_master=public,
                          reinject_master=reinject) as inst:
        yield inst


def test_behind_postscreen_the_filter_on_smtpd_pass_answers_the_client(
        behind_postscreen: Instance, tmp_path: Path) -> None:
    inst = behind_postscreen
    image = tmp_path / "holiday.jpg"
    image.write_bytes(KNOWN)
    proc = start_proxy(inst, tmp_path, sections='[policy]\non_match = "reject"\n')
    try:
        clean = inst.swaks("--to", "bob@example.net", "--header", "Subject: ps-clean")
        match = inst.swaks("--to", "bob@example.net", "--header", "Subject: ps-match",
                           "--attach-type", "image/jpeg", "--attach", f"@{image}")
    finally:
        stop_proxy(proc)
    assert clean.returncode == 0, clean.stdout + inst.maillog()
    assert wait_until(lambda: arrived(inst.sink, b"ps-clean")), inst.maillog()
    assert b"X-Mailfilter: clean\r\n" in arrived(inst.sink, b"ps-clean")[0]
    assert match.returncode != 0 and "550 5.7.1" in match.stdout, match.stdout
    assert "postfix/postscreen" in inst.maillog(), inst.maillog()
