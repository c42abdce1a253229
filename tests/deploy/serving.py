"""`mailfilter serve` instances for the deployment tests: subprocesses configured the way
containers are (MAILFILTER_* variables over an empty settings file), started together,
read through their /metrics and /readyz, fed over SMTP, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families
from proxy.proxy_harness import spawn_serve

from mailfilter.redis_connection import KeyLayout


def clean_environ() -> dict[str, str]:
    """This process's environment without MAILFILTER_* (a developer's own overrides must
    not leak into the instances under test)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILFILTER_")}


def mailfilter(*args: str, env: Mapping[str, str], timeout: float = 120.0
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailfilter", *args], capture_output=True,
                          text=True, timeout=timeout, env={**clean_environ(), **env})


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


@dataclass
class Served:
    """One running `mailfilter serve`."""

    name: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    config: Path
    host: str
    port: int
    metrics_port: int
    quarantine_dir: Path
    log_path: Path

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = http_get(self.metrics_port, "/metrics")
        assert status == 200, f"{self.name} /metrics: {status} {text}"
        out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
        return out

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, lbl), v in self.metrics().items()
                   if n == name and wanted <= set(lbl))

    def send(self, raw: bytes, rcpt: str = "bob@example.net") -> str:
        """One SMTP transaction; the reply to the end of DATA as "code text"."""
        with smtplib.SMTP(self.host, self.port, timeout=60) as client:
            client.ehlo("client.test")
            client.mail("alice@example.org")
            code, text = client.rcpt(rcpt)
            assert code == 250, f"{self.name}: RCPT answered {code} {text!r}"
            code, text = client.data(raw)
            return f"{code} {text.decode(errors='replace')}"

    def quarantined(self) -> list[dict[str, object]]:
        return [json.loads(p.read_text()) for p in sorted(self.quarantine_dir.glob("*/*.json"))]

    def log(self) -> list[dict[str, object]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(x) for x in lines if x.startswith("{")]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def start(name: str, directory: Path, env: Mapping[str, str]) -> Served:
    """Start `mailfilter serve` with settings from `env` only (an empty settings file, so
    /etc/mailfilter/mailfilter.toml of the machine is not read). `env` must set the SMTP
    and metrics listeners and the quarantine path."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "empty.toml"
    config.write_text("# every setting comes from MAILFILTER_* variables\n")
    listen = env["MAILFILTER_SMTP__LISTEN"]
    host, _, port = listen.rpartition(":")
    metrics_port = int(env["MAILFILTER_METRICS__LISTEN"].rpartition(":")[2])
    log_path = directory / "serve.log"
    full_env = {"MAILFILTER_LOGGING__FORMAT": "json", **env}
    proc = spawn_serve(config, log_path, full_env, base_env=clean_environ())
    return Served(name, proc, full_env, config, host.strip("[]"), int(port), metrics_port,
                  Path(env["MAILFILTER_QUARANTINE__PATH"]), log_path)


def wait_ready(*instances: Served, timeout: float = 60.0) -> None:
    """Until every instance answers /readyz with 200 (lists loaded, workers up, next hop
    reachable)."""
    deadline = time.monotonic() + timeout
    for inst in instances:
        while True:
            if inst.proc.poll() is not None:
                raise AssertionError(f"{inst.name} exited with {inst.proc.returncode}:\n"
                                     + inst.log_path.read_text(errors="replace")[-3000:])
            status, body = http_get(inst.metrics_port, "/readyz")
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{inst.name} not ready: {status} {body}")
            time.sleep(0.05)


@contextlib.contextmanager
def running(*instances: Served) -> Iterator[tuple[Served, ...]]:
    """Wait until all are ready; stop them all afterwards, whatever happened."""
    try:
        wait_ready(*instances)
        yield instances
    finally:
        for inst in instances:
            inst.stop()


def purge_redis_keys(redis_url: str, key_prefix: str) -> None:
    """Delete every key of one deployment (its keys all carry the hash tag `{prefix}`)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=KeyLayout(key_prefix).tag + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def wait_until(predicate: object, timeout: float, step: float = 0.02) -> float | None:
    """Seconds until `predicate()` was true, or None after `timeout`."""
    assert callable(predicate)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    return None
