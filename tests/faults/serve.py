"""`mailfilter serve` as operators run it, as a subprocess of a test: its config written by
the proxy harness's `write_config`, settings that file does not carry given as
`MAILFILTER_SECTION__KEY` variables, the stand-in image enrolled with `hashes add`, and its
JSON log kept for the test to read."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.proxy_harness import KNOWN, free_port, spawn_serve, wait_port, write_config

from faults import procs


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    config: Path
    log_path: Path
    quarantine: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        return procs.worker_pids(self.pid)

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in self.workers() if procs.alive(p)]
            if len(pids) >= count:
                return pids
            time.sleep(0.05)
        raise TimeoutError(f"{count} workers not up within {timeout}s: {self.workers()}")

    def log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, msg: str, timeout: float = 20.0, after: int = 0) -> dict[str, Any]:
        """The first log record with this `msg` among those after the first `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.log()[after:]:
                if record.get("msg") == msg:
                    return record
            time.sleep(0.05)
        raise TimeoutError(f"no log line {msg!r} within {timeout}s")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            return str(r.read().decode())

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def hashes_add(config: Path, image: Path, env: Mapping[str, str], list_name: str = "stand-ins"
               ) -> None:
    done = subprocess.run([sys.executable, "-m", "mailfilter", "hashes", "add", "--config",
                           str(config), "--list", list_name, str(image)],
                          capture_output=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr.decode(errors="replace")


@contextlib.contextmanager
def serving(tmp_path: Path, next_hop: str, *, smtp: str = "", sections: str = "",
            env: Mapping[str, str] | None = None, enroll: bool = True, processes: int = 2,
            preexec: Any = None) -> Iterator[Served]:
    """`mailfilter serve` on a free port until the block ends (then SIGKILL if still up).
    `smtp`: more [smtp] lines; `sections`: more tables; `env`: MAILFILTER_* overrides."""
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, next_hop, port, metrics_port, extra=smtp,
                          sections=sections)
    variables = {"MAILFILTER_LOGGING__FORMAT": "json",
                 "MAILFILTER_WORKERS__PROCESSES": str(processes), **(env or {})}
    if enroll:
        image = tmp_path / "known.jpg"
        image.write_bytes(KNOWN)
        hashes_add(config, image, variables)
    log_path = tmp_path / "serve.log"
    proc = spawn_serve(config, log_path, variables, preexec_fn=preexec)
    served = Served(proc, port, metrics_port, config, log_path, tmp_path / "quarantine",
                    variables)
    try:
        wait_port("127.0.0.1", port, timeout=60, proc=proc)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
