"""With a real Postfix: a private instance (postfix_harness.py, placement "milter") with
`smtpd_milters = inet:127.0.0.1:PORT`, `milter_default_action = tempfail`, and a recording
sink as its relayhost. `mailfilter serve` runs as a subprocess with only the milter
listening (`[smtp] listen` empty). Mail is sent with swaks.

Skipped when Postfix is not installed, unless CI is set (then it fails)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy.postfix_harness import (
    Instance,
    arrived,
    postfix_instance,
    require_postfix,
    stop_proxy,
    wait_until,
)
from proxy.proxy_harness import KNOWN, enroll, free_port, spawn_serve, wait_port, write_config

pytestmark = pytest.mark.postfix
require_postfix()

Serve = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    with postfix_instance("milter") as inst:
        yield inst


def start_milter_service(instance: Instance, tmp_path: Path, sections: str = ""
                         ) -> subprocess.Popen[bytes]:
    """`mailfilter serve` with the milter where `instance` expects it and no SMTP proxy,
    KNOWN enrolled."""
    config = write_config(tmp_path, f"127.0.0.1:{instance.reinject_port}", free_port(),
                          free_port(), sections=f"""
[milter]
listen = "inet:127.0.0.1:{instance.filter_port}"
{sections}""")
    image = tmp_path / "known.jpg"
    image.write_bytes(KNOWN)
    enroll(config, image)
    proc = spawn_serve(config, tmp_path / "serve.log",
                       {"MAILFILTER_SMTP__LISTEN": ""})  # milter only
    wait_port("127.0.0.1", instance.filter_port, proc=proc)
    return proc


@pytest.fixture
def serve(instance: Instance, tmp_path: Path) -> Iterator[Serve]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(sections: str = "") -> subprocess.Popen[bytes]:
        proc = start_milter_service(instance, tmp_path, sections)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_proxy(proc)


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (tmp_path / "quarantine").glob("*/*.json")]


def send_photo(instance: Instance, tmp_path: Path, subject: str
               ) -> subprocess.CompletedProcess[str]:
    image = tmp_path / "holiday.jpg"
    image.write_bytes(KNOWN)
    return instance.swaks("--to", "bob@example.net", "--header", f"Subject: {subject}",
                          "--attach-type", "image/jpeg", "--attach", f"@{image}")


def test_clean_message_is_delivered(instance: Instance, serve: Serve, tmp_path: Path) -> None:
    serve()
    run = instance.swaks("--to", "bob@example.net", "--header", "Subject: milter-clean")
    assert run.returncode == 0, run.stdout + run.stderr
    assert wait_until(lambda: arrived(instance.sink, b"milter-clean")), instance.maillog()
    [data] = arrived(instance.sink, b"milter-clean")
    assert b"\r\nX-Mailfilter: clean\r\n" in data  # added by Postfix at our request
    log = (tmp_path / "serve.log").read_text()
    assert "front_end=milter" in log and "client=127.0.0.1" in log
    assert "queue_id=null" not in log  # Postfix's queue id from the `i` macro
    assert records(tmp_path) == []


def test_matching_message_is_held_and_recorded(instance: Instance, serve: Serve,
                                               tmp_path: Path) -> None:
    serve()
    run = send_photo(instance, tmp_path, "milter-hold")
    assert run.returncode == 0, run.stdout + run.stderr  # accepted: held, not bounced
    [record] = records(tmp_path)
    assert record["verdict"] == "match" and record["subject"] == "milter-hold"
    assert record["front_end"] == "milter"
    macros = record["milter"]["macros"]
    assert macros["{client_addr}"] == "127.0.0.1"  # asked for with SETSYMLIST
    assert macros["i"] == record["queue_id"]
    assert record["client"]["addr"] == "127.0.0.1" and record["client"]["helo"] == "client.test"
    held = [q for q in instance.queue() if q.get("queue_id") == record["queue_id"]]
    assert held and held[0]["queue_name"] == "hold", instance.queue()
    assert "mailfilter" in instance.maillog() and "hold" in instance.maillog()
    assert not arrived(instance.sink, b"milter-hold")


def test_matching_message_is_rejected(instance: Instance, serve: Serve,
                                      tmp_path: Path) -> None:
    serve('[policy]\non_match = "reject"\n')
    run = send_photo(instance, tmp_path, "milter-reject")
    assert run.returncode != 0
    assert "550 5.7.1 Message content rejected" in run.stdout, run.stdout
    assert records(tmp_path) == []
    assert not arrived(instance.sink, b"milter-reject")


def test_postfix_tempfails_while_the_milter_is_down(instance: Instance) -> None:
    run = instance.swaks("--to", "bob@example.net", "--header", "Subject: milter-down")
    assert run.returncode != 0
    assert "451 4.7.1" in run.stdout, run.stdout  # milter_default_action = tempfail
    assert not arrived(instance.sink, b"milter-down")
