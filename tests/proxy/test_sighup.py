"""SIGHUP on `mailfilter serve` (a subprocess, as operators run it): the settings file and
the hash lists are read again and apply to the next message; a file that became invalid
is refused with one error line and the running settings stay."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SmtpSink
from factories import jpeg, message, message_bytes

from proxy.proxy_harness import (
    KNOWN,
    RawClient,
    enroll,
    free_port,
    spawn_serve,
    wait_port,
    write_config,
)

OTHER = jpeg(77)  # enrolled only while the server runs


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    write: Any  # write(sections: str) -> Path: the config file, rewritten
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]

    def hup_and_wait(self, msg: str, timeout: float = 30.0) -> None:
        before = sum(1 for x in self.lines() if x.get("msg") == msg)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for x in self.lines() if x.get("msg") == msg) > before:
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"no {msg!r} after SIGHUP:\n{self.log.read_text()}")


@pytest.fixture
def served(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Served]:
    port, metrics_port = free_port(), free_port()

    def write(sections: str = "") -> Path:
        # (the local store also notices a list change on its own, by polling SQLite's
        # data_version; what is checked here is that the entry is in effect once the
        # SIGHUP's reload is logged)
        return write_config(tmp_path, smtp_sink.address, port, metrics_port,
                            sections=sections, reload_interval="1h")

    config = write()
    image = tmp_path / "known.jpg"
    image.write_bytes(KNOWN)
    enroll(config, image)
    log = tmp_path / "serve.log"
    proc = spawn_serve(config, log, {"MAILFILTER_LOGGING__FORMAT": "json"})
    try:
        wait_port("127.0.0.1", port, proc=proc)
        yield Served(proc, port, write, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _send(port: int, image: bytes, subject: str) -> str:
    raw = message_bytes(message(subject=subject, attachments=[("p.jpg", "image/jpeg", image)]))
    c = RawClient("127.0.0.1", port)
    try:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<a@example.org>").startswith("250")
        assert c.cmd("RCPT TO:<b@example.net>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        c.send(raw + b".\r\n")
        return c.read_reply()
    finally:
        c.close()


def test_sighup_reloads_settings_and_lists(served: Served, smtp_sink: SmtpSink,
                                           tmp_path: Path) -> None:
    assert _send(served.port, KNOWN, "first").startswith("250")  # quarantined
    assert len(list((tmp_path / "quarantine").glob("*/*.json"))) == 1
    assert _send(served.port, OTHER, "other").startswith("250")  # clean, relayed
    assert len(smtp_sink.wait_for(1)) == 1

    config = served.write('[policy]\non_match = "reject"\n')
    other = tmp_path / "other.jpg"
    other.write_bytes(OTHER)
    enroll(config, other)  # into the store the server reads
    served.hup_and_wait("settings reloaded")
    assert _send(served.port, KNOWN, "second").startswith("550 5.7.1")
    # the new list entry counts at once (no cached "clean" verdict from before)
    assert _send(served.port, OTHER, "other again").startswith("550 5.7.1")
    assert len(list((tmp_path / "quarantine").glob("*/*.json"))) == 1
    assert len(smtp_sink.messages) == 1


@pytest.mark.parametrize("broken", [
    '[policy]\non_match = "explode"\n',  # a bad value
    '[policy\non_match = "tag"\n',  # not TOML
])
def test_sighup_with_invalid_file_keeps_running_settings(served: Served,
                                                         smtp_sink: SmtpSink,
                                                         broken: str) -> None:
    served.write('[policy]\non_match = "reject"\n')
    served.hup_and_wait("settings reloaded")
    served.write(broken)
    served.hup_and_wait("reload refused, keeping the running settings")
    assert served.proc.poll() is None
    assert _send(served.port, KNOWN, "still rejected").startswith("550 5.7.1")
    errors = [x for x in served.lines() if x.get("level") == "error"]
    assert len(errors) == 1, errors
    assert "mailfilter.toml" in json.dumps(errors[0])
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0
