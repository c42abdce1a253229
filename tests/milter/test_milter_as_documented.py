"""The milter placement exactly as documented (docs/milter.md, "Reports and releases"), with
a private real Postfix: main.cf gets the setting lines of deploy/postfix/milter.cf and
master.cf the listener of deploy/postfix/milter.master.cf, as written (only the ports are
the test's); `mailfilter serve` runs milter only with `next_hop` on that listener.

- report mail of a held message reaches its recipient through the listener;
- `mailfilter quarantine release` delivers the message once and it is not held again
  (on port 25 it would be: the milter scans it again); the documented
  `postsuper -d QUEUEID hold` then removes Postfix's copy, and nothing more is delivered;
- `postsuper -H` alone (the other documented way) also delivers once, unscanned;
- SIGHUP moves report mail to a changed next hop (issue 18, defect 1), and the start-up
  warning and /readyz said it was unreachable before.

Skipped when Postfix is not installed, unless CI is set (then it fails)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
from proxy.proxy_harness import (
    KNOWN,
    enroll,
    free_port,
    http_get,
    spawn_serve,
    wait_port,
    write_config,
)

# A private Postfix with the milter as docs/milter.md sets it up: about a minute in all.
pytestmark = [pytest.mark.postfix, pytest.mark.slow]
require_postfix()

REPO = Path(__file__).resolve().parents[2]
MILTER_CF = REPO / "deploy" / "postfix" / "milter.cf"
MILTER_MASTER_CF = REPO / "deploy" / "postfix" / "milter.master.cf"
DOCUMENTED_FILTER = "inet:127.0.0.1:8891"
DOCUMENTED_NEXT_HOP = "127.0.0.1:10026"
REPORT_TO = "abuse@example.net"


def snippet_lines(path: Path) -> str:
    """The snippet without its comments, braces escaped for str.format."""
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(lines).replace("{", "{{").replace("}", "}}") + "\n"


def documented_main_cf() -> str:
    text = snippet_lines(MILTER_CF)
    assert DOCUMENTED_FILTER in text
    return text.replace(DOCUMENTED_FILTER, "inet:127.0.0.1:{filter}")


def documented_listener() -> str:
    text = snippet_lines(MILTER_MASTER_CF)
    assert text.startswith(DOCUMENTED_NEXT_HOP + " ")
    return text.replace(DOCUMENTED_NEXT_HOP, "127.0.0.1:{reinject}")


def test_docs_show_the_snippets_as_shipped() -> None:
    """docs/milter.md quotes the listener verbatim, and names it as the next hop."""
    doc = (REPO / "docs" / "milter.md").read_text()
    listener = "\n".join(line for line in MILTER_MASTER_CF.read_text().splitlines()
                         if line.strip() and not line.startswith("#"))
    assert f"```\n{listener}\n```" in doc
    assert f'next_hop = "{DOCUMENTED_NEXT_HOP}"' in doc


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    with postfix_instance("milter", main_cf=documented_main_cf(),
                          reinject_master=documented_listener()) as inst:
        yield inst


class Service:
    def __init__(self, instance: Instance, tmp_path: Path) -> None:
        self.instance, self.tmp = instance, tmp_path
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = tmp_path / "mailfilter.toml"

    def write(self, next_hop: str) -> None:
        write_config(self.tmp, next_hop, free_port(), self.metrics_port, sections=f"""
[milter]
listen = "inet:127.0.0.1:{self.instance.filter_port}"
[report]
to = ["{REPORT_TO}"]
from = "mailfilter@example.org"
retry_min = "1s"
retry_max = "2s"
""")

    def start(self, next_hop: str) -> None:
        self.write(next_hop)
        image = self.tmp / "known.jpg"
        image.write_bytes(KNOWN)
        enroll(self.config, image)
        self.proc = spawn_serve(self.config, self.tmp / "serve.log",
                                {"MAILFILTER_SMTP__LISTEN": ""})  # milter only
        wait_port("127.0.0.1", self.instance.filter_port, proc=self.proc)

    def log(self) -> str:
        return (self.tmp / "serve.log").read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text())
                for p in (self.tmp / "quarantine").glob("*/*.json")]

    def quarantine(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailfilter", "quarantine", *args,
                               "--config", str(self.config)],
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    def send_photo(self, subject: str) -> dict[str, Any]:
        image = self.tmp / "holiday.jpg"
        image.write_bytes(KNOWN)
        before = {r["id"] for r in self.records()}
        run = self.instance.swaks("--to", "bob@example.net", "--header",
                                  f"Subject: {subject}", "--attach-type", "image/jpeg",
                                  "--attach", f"@{image}")
        assert run.returncode == 0, run.stdout + run.stderr  # accepted: held
        [record] = [r for r in self.records() if r["id"] not in before]
        return record


@pytest.fixture
def service(instance: Instance, tmp_path: Path) -> Iterator[Service]:
    svc = Service(instance, tmp_path)
    yield svc
    if svc.proc is not None:
        stop_proxy(svc.proc)


def held(instance: Instance) -> list[str]:
    return [str(q["queue_id"]) for q in instance.queue() if q.get("queue_name") == "hold"]


def delivered(instance: Instance, subject: str) -> list[bytes]:
    """The message itself (the report mail names the subject too)."""
    return [m for m in arrived(instance.sink, f"\r\nSubject: {subject}\r\n".encode())
            if b"X-Mailfilter-Report:" not in m]


def report_mail(instance: Instance, entry_id: str) -> list[bytes]:
    return arrived(instance.sink, f"X-Mailfilter-Report: {entry_id}".encode())


def postsuper(instance: Instance, *args: str) -> None:
    run = subprocess.run(["postsuper", "-c", str(instance.config_dir), *args],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def settle(instance: Instance) -> None:
    """Flush the queue and give Postfix time to deliver anything it still would."""
    instance.flush()
    time.sleep(3)


def test_report_mail_and_release_delivered_once_and_not_held_again(
        instance: Instance, service: Service) -> None:
    service.start(f"127.0.0.1:{instance.reinject_port}")
    assert "next hop not reachable" not in service.log()
    record = service.send_photo("documented-release")
    queue_id = record["queue_id"]
    assert queue_id in held(instance)
    # the report mail, through the listener without the milter, to its recipient
    assert wait_until(lambda: report_mail(instance, record["id"])), \
        service.log() + instance.maillog()
    [report] = report_mail(instance, record["id"])
    assert f"RCPT TO:<{REPORT_TO}>".encode() in report or REPORT_TO.encode() in report

    run = service.quarantine("release", record["id"], "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"released {record['id']} to bob@example.net" in run.stdout
    # ... and says what to do with Postfix's copy
    assert f"postsuper -d {queue_id} hold" in run.stderr, run.stderr
    assert wait_until(lambda: delivered(instance, "documented-release")), \
        instance.maillog()
    # Not scanned again (the listener has no milter): no second entry, no second hold.
    assert [r["id"] for r in service.records()] == [record["id"]]
    assert held(instance) == [queue_id]
    # The documented step for Postfix's own copy; then nothing more is delivered.
    postsuper(instance, "-d", queue_id, "hold")
    assert held(instance) == []
    settle(instance)
    [copy] = delivered(instance, "documented-release")
    assert b"X-Mailfilter-Released: by " in copy
    assert len(report_mail(instance, record["id"])) == 1


def test_postsuper_release_alone_delivers_once_without_scanning_again(
        instance: Instance, service: Service) -> None:
    service.start(f"127.0.0.1:{instance.reinject_port}")
    record = service.send_photo("documented-postsuper-H")
    postsuper(instance, "-H", record["queue_id"])
    settle(instance)
    assert wait_until(lambda: delivered(instance, "documented-postsuper-H"))
    settle(instance)
    assert len(delivered(instance, "documented-postsuper-H")) == 1
    assert [r["id"] for r in service.records()] == [record["id"]]
    assert held(instance) == []


def test_sighup_moves_report_mail_to_a_changed_next_hop(instance: Instance,
                                                        service: Service) -> None:
    dead = free_port()  # nothing listens there: the default 10026 of a milter-only setup
    service.start(f"127.0.0.1:{dead}")
    assert "next hop not reachable: report mail waits in the outbox" in service.log()
    record = service.send_photo("documented-sighup")  # (the workers are up after this)
    status, body = http_get(service.metrics_port, "/readyz")
    assert status == 200 and body == (f"ready\nwarning: next hop 127.0.0.1:{dead} not "
                                      "reachable: report mail and releases wait\n"), body
    assert wait_until(lambda: "report step failed" in service.log()), service.log()
    assert not report_mail(instance, record["id"])

    service.write(f"127.0.0.1:{instance.reinject_port}")
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "settings reloaded" in service.log()), service.log()
    assert wait_until(lambda: report_mail(instance, record["id"])), service.log()
    assert http_get(service.metrics_port, "/readyz") == (200, "ready\n")
    postsuper(instance, "-d", record["queue_id"], "hold")
