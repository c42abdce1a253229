"""Harness of the hostile-input suite (fixtures registered by conftest.py).

Its server: one `mailfilter serve` subprocess for the whole suite (real worker pool, local
store with the stand-in enrolled), its next hop a recording sink
that takes bare LF as a line end (so a smuggled end of DATA would show), with settings that
make every outcome visible: unscannable messages are quarantined (their records say why),
a short command timeout (slow clients) and a small connection limit.

After every test the server must still be up, and its memory bounded: the main process's
peak RSS (VmHWM) under SERVER_PEAK_KIB, each live worker's under its address-space limit."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from faults import procs
from faults.client import attempt
from faults.ledger import Attempt
from faults.serve import Served, serving
from proxy.proxy_harness import RecordingSink, running_sink

COMMAND_TIMEOUT = 3.0
MAX_CONNECTIONS = 40
SERVER_PEAK_KIB = 400 * 1024  # the serve process itself (~100 MB measured; workers are capped)
WORKER_LIMIT_KIB = 1024 * 1024  # workers.memory_limit (RLIMIT_AS), the default 1 GiB
TIME_BOUND = 30.0  # seconds any one hostile message may take, end to end (a hang guard)


@dataclass
class HostileServer:
    served: Served
    sink: RecordingSink

    @property
    def port(self) -> int:
        return self.served.port

    def send(self, raw: bytes, **kw: Any) -> tuple[Attempt, float]:
        started = time.monotonic()
        result = attempt("127.0.0.1", self.port, raw, timeout=TIME_BOUND + 30, **kw)
        return result, time.monotonic() - started

    def record(self, reply: str) -> dict[str, Any]:
        """The quarantine record of the message a `250 ... Ok <id>` reply acknowledged."""
        m = re.search(r"Ok ([0-9A-Z]{10,})", reply)
        assert m, f"not a quarantine acknowledgement: {reply}"
        [path] = list(self.served.quarantine.rglob(f"{m.group(1)}.json"))
        return dict(json.loads(path.read_text()))

    def delivered(self, seq: str) -> list[bytes]:
        needle = f"X-Test-Seq: {seq}\r\n".encode()
        return [m.data for m in self.sink.messages if needle in m.data]

    def check_bounded(self) -> None:
        assert self.served.proc.poll() is None, "the server died"
        peak = procs.status_kib(self.served.pid, "VmHWM")
        assert 0 < peak < SERVER_PEAK_KIB, f"serve peak RSS {peak} KiB"
        for pid in self.served.workers():
            assert procs.status_kib(pid, "VmHWM") < WORKER_LIMIT_KIB


def reasons(record: dict[str, Any]) -> set[str]:
    found = {u["reason"] for u in record["unscannable"]}
    found |= {a["skipped"] for a in record["attachments"] if a["skipped"]}
    return found


@pytest.fixture(scope="session")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileServer]:
    tmp = tmp_path_factory.mktemp("hostile")
    with running_sink() as sink, serving(
        tmp, sink.address, processes=2,
        smtp=f'command_timeout = "{COMMAND_TIMEOUT}s"\nmax_connections = {MAX_CONNECTIONS}\n',
        sections='[policy]\non_unscannable = "quarantine"\n',
    ) as served:
        served.wait_workers(2)
        yield HostileServer(served, sink)
        assert served.terminate() == 0
        # Whatever the input, the log holds our JSON lines only: no library's complaint
        # quoting message bytes, no traceback of an unexpected exception.
        stray = [x for x in served.log_text().splitlines() if not x.startswith("{")]
        assert stray == [], stray[:20]
        errors = [r for r in served.log() if r.get("level") in ("error", "critical")]
        assert errors == [], errors[:5]


@pytest.fixture
def server(hostile_server: HostileServer) -> Iterator[HostileServer]:
    yield hostile_server
    hostile_server.check_bounded()



