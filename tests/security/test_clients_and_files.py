"""Who may talk to the proxy, and who may read what it keeps.

- `allowed_clients` is checked against the socket's peer address at connect: a client
  outside it gets 554 and nothing it sends (pipelined commands, XCLIENT naming an allowed
  address) reaches the next hop; one inside it is served.
- Files: `mailfilter serve` run with umask 000 (the worst a service manager could give it)
  still keeps the quarantine (entries and record files 0600, directories 0700), the local
  store and the report files owner-only.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from faults.client import attempt, make_message
from proxy.proxy_harness import RecordingSink, RunningProxy, running_sink

Factory = Callable[..., RunningProxy]


def _from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(30)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def test_only_allowed_networks_are_served(proxy_factory: Factory,
                                          recording_sink: RecordingSink) -> None:
    p = proxy_factory(recording_sink.address, smtp={"allowed_clients": ["127.0.0.2/32"]})
    outsider = _from("127.0.0.1", p.port)
    # everything at once, before any reply: nothing of it may be acted on
    outsider.sendall(b"XCLIENT ADDR=127.0.0.2\r\nEHLO x\r\nMAIL FROM:<a@example.org>\r\n"
                     b"RCPT TO:<b@example.net>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
    replies = _read_all(outsider).decode()
    outsider.close()
    assert replies.startswith("554 5.7.1") and replies.count("\r\n") == 1, replies
    assert recording_sink.commands == [] and recording_sink.messages == []

    insider = _from("127.0.0.2", p.port)
    assert insider.recv(200).startswith(b"220")
    insider.close()
    result = attempt("127.0.0.1", p.port, make_message("allowed-check"))
    assert result.code == 554  # the same proxy still refuses 127.0.0.1


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_owner_only_even_with_umask_0(tmp_path: Path) -> None:
    from faults.serve import serving

    reports = tmp_path / "reports"
    with running_sink() as sink, serving(
            tmp_path, sink.address, preexec=lambda: os.umask(0),
            sections=f'[report]\ndir = "{reports}"\n') as s:
        result = attempt("127.0.0.1", s.port, make_message("held", "known"))
        assert result.accepted, result
        deadline = time.monotonic() + 20
        while not list(reports.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the report goes out from the outbox in the background
        assert s.terminate() == 0
    entries = [p for p in s.quarantine.rglob("*") if p.is_file()]
    assert any(p.suffix == ".eml" for p in entries)
    for path in entries:
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
    for path in [s.quarantine, *(p for p in s.quarantine.rglob("*") if p.is_dir())]:
        assert _mode(path) == 0o700, (path, oct(_mode(path)))
    store = tmp_path / "store"
    assert _mode(store) == 0o700
    for path in store.iterdir():
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
    [report] = reports.glob("*.json")
    assert _mode(report) == 0o600 and _mode(reports) == 0o700
    json.loads(report.read_text())
