"""Soak: mixed mail at a steady rate through `mailfilter serve` for minutes, with faults
injected at random, and the accounting of every message at the end.

Everything runs on loopback and is started here: a private `redis-server` (hash lists and
verdict cache; append-only file), `mailfilter serve` (a subprocess, as operators run it,
the stand-in image enrolled), a next hop that keeps what it accepts, and sending clients
that behave like an MTA's queue (a 4xx is retried a second later, for as long as it takes
within the run's grace period).

Traffic, open loop at `--rate` messages/s: half text-only, a fifth one photo, a tenth three
photos, a tenth the enrolled stand-in (a match: quarantined), a tenth a truncated JPEG
(unscannable: relayed, per the default policy). Photos come from a set of 32, so the
verdict cache gets hits too. Faults, one every `--fault-interval` seconds (+-50%):
the next hop goes down for 0.5-3 s (connections cut, new ones refused); a worker process
is SIGKILLed (one seen running a task, if any within 2 s); Redis drops every client
connection (CLIENT KILL); Redis is killed and restarted 1-2 s later.

At the end (after the senders' retries are done, then SIGTERM): messages sent, delivered,
quarantined, refused (after every retry), lost (acknowledged but found nowhere: must be 0),
duplicated, unanswered; reply latency p50/p99 of accepted attempts; peak memory of the
serve process and of serve + workers. The exit status is 1 when anything is lost,
duplicated or unanswered, or serve did not exit 0.

    python bench/soak.py [--duration 300] [--rate 20] [--fault-interval 15] [--seed 1]
                         [--json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

KINDS = (("text", 50), ("photo", 20), ("photos", 10), ("known", 10), ("unscannable", 10))
RETRY_DELAY = 1.0
ATTEMPT_TIMEOUT = 120.0
GRACE = 120.0  # after the last message is due: time for retries to finish


@dataclass
class Figures:
    peak_serve_kib: int = 0
    peak_total_kib: int = 0
    peak_worker_kib: int = 0
    faults: list[tuple[float, str]] = field(default_factory=list)
    late: int = 0  # messages sent more than a second after they were due (senders busy)


def _sample_memory(serve_pid: int, figures: Figures, stop: threading.Event) -> None:
    from faults import procs

    while not stop.wait(0.5):
        serve = procs.status_kib(serve_pid, "VmRSS")
        workers = [procs.status_kib(p, "VmRSS") for p in procs.worker_pids(serve_pid)]
        figures.peak_total_kib = max(figures.peak_total_kib, serve + sum(workers))
        figures.peak_worker_kib = max([figures.peak_worker_kib, *workers])
        figures.peak_serve_kib = max(figures.peak_serve_kib,
                                     procs.status_kib(serve_pid, "VmHWM"))


def _busy_worker(serve_pid: int, rng: random.Random, within: float = 2.0) -> int | None:
    """A worker seen running (a task in hand) within `within` seconds, else any."""
    from faults import procs

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for pid in procs.worker_pids(serve_pid):
            if procs.running(pid):
                return pid
        time.sleep(0.002)
    workers = [p for p in procs.worker_pids(serve_pid) if procs.alive(p)]
    return rng.choice(workers) if workers else None


def _inject_faults(rng: random.Random, interval: float, end: float, hop: Any, redis_server: Any,
                   serve_pid: int, figures: Figures, stop: threading.Event) -> None:

    started = time.monotonic()
    while True:
        wait = interval * rng.uniform(0.5, 1.5)  # about duration / interval faults a run
        if stop.wait(wait) or time.monotonic() > end:
            return
        kind = rng.choice(["next-hop-restart", "worker-kill", "redis-drop", "redis-restart"])
        at = round(time.monotonic() - started, 1)
        if kind == "next-hop-restart":
            hop.stop()
            time.sleep(rng.uniform(0.5, 3.0))
            hop.start()
        elif kind == "worker-kill":
            victim = _busy_worker(serve_pid, rng)
            if victim is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        elif kind == "redis-drop":
            client = redis_server.client()
            for client_type in ("normal", "pubsub"):
                with contextlib.suppress(Exception):
                    client.execute_command("CLIENT", "KILL", "TYPE", client_type)
            client.close()
        else:
            redis_server.kill()
            time.sleep(rng.uniform(1.0, 2.0))
            redis_server.start()
        figures.faults.append((at, kind))


def run(duration: float, rate: float, fault_interval: float, seed: int,
        processes: int) -> dict[str, Any]:
    from faults.client import deliver, make_message
    from faults.ledger import Ledger, account, read_quarantine
    from faults.nexthop import NextHop
    from faults.redis_server import RedisServer
    from faults.serve import serving

    rng = random.Random(seed)
    kinds = [k for k, weight in KINDS for _ in range(weight)]
    figures = Figures()
    ledger = Ledger(prefix="s")
    with tempfile.TemporaryDirectory(prefix="mailfilter-soak-") as tmp_name:
        tmp = Path(tmp_name)
        redis_server = RedisServer(tmp / "redis").start()
        hop = NextHop()
        hop.start()
        env = {"MAILFILTER_STORE__REDIS_URL": redis_server.url,
               "MAILFILTER_STORE__KEY_PREFIX": "mf-soak",
               "MAILFILTER_STORE__RELOAD_INTERVAL": "1s"}
        try:
            with serving(tmp, hop.address, env=env, processes=processes) as served:
                served.wait_workers(processes)
                stop = threading.Event()
                start = time.monotonic()
                end = start + duration
                threads = [
                    threading.Thread(target=_sample_memory, args=(served.pid, figures, stop),
                                     daemon=True),
                    threading.Thread(target=_inject_faults, daemon=True, args=(
                        random.Random(seed + 1), fault_interval, end, hop, redis_server,
                        served.pid, figures, stop)),
                ]
                for t in threads:
                    t.start()
                # enough senders for the rate even when every one waits out retries
                with ThreadPoolExecutor(max_workers=max(16, int(rate * 8))) as senders:
                    i = 0
                    while True:
                        due = start + i / rate
                        if due >= end:
                            break
                        time.sleep(max(0.0, due - time.monotonic()))
                        if time.monotonic() - due > 1.0:
                            figures.late += 1
                        seq = ledger.new_seq()
                        raw = make_message(seq, rng.choice(kinds), seed=rng.randrange(32))
                        retries = int((end + GRACE - due) / RETRY_DELAY)
                        senders.submit(deliver, ledger, seq, raw, "127.0.0.1", served.port,
                                       retries=retries, retry_delay=RETRY_DELAY,
                                       timeout=ATTEMPT_TIMEOUT)
                        i += 1
                stop.set()
                for t in threads:
                    t.join(30)
                if not hop.running:
                    hop.start()
                exit_code = served.terminate(timeout=120)
                elapsed = time.monotonic() - start
                result = account(ledger, hop.kept(), read_quarantine(served.quarantine))
        finally:
            hop.stop()
            redis_server.kill()
    attempts = ledger.replies()
    accepted = sorted(a.seconds for a in attempts if a.accepted)
    problems = result.problems()
    lost = len(result.lost)

    def pct(q: float) -> float | None:
        if not accepted:
            return None
        return round(accepted[min(len(accepted) - 1, int(q * len(accepted)))] * 1000, 1)

    return {
        "duration_s": round(elapsed, 1),
        "rate": rate,
        "seed": seed,
        "processes": processes,
        "sent": result.sent,
        "delivered": result.delivered,
        "quarantined": result.quarantined,
        "refused": result.refused,
        "lost": lost,
        "duplicated": len(result.duplicated),
        "unanswered": len(result.unanswered),
        "problems": {k: v[:10] for k, v in problems.items()},
        "attempts": len(attempts),
        "attempts_refused": sum(1 for a in attempts if a.refused),
        "refusal_codes": dict(collections.Counter(a.reply[:9] for a in attempts
                                                  if not a.accepted)),
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99),
                       "mean": round(statistics.fmean(accepted) * 1000, 1) if accepted
                       else None},
        "peak_memory_mb": {"serve": round(figures.peak_serve_kib / 1024, 1),
                           "serve_and_workers": round(figures.peak_total_kib / 1024, 1),
                           "largest_worker": round(figures.peak_worker_kib / 1024, 1)},
        "faults": dict(collections.Counter(kind for _, kind in figures.faults)),
        "fault_times": figures.faults,
        "late_sends": figures.late,
        "serve_exit_code": exit_code,
        "ok": lost == 0 and not problems and exit_code == 0,
    }


def report(r: dict[str, Any]) -> str:
    faults = ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items())) or "none"
    lat, mem = r["latency_ms"], r["peak_memory_mb"]
    lines = [
        f"soak: {r['duration_s']} s at {r['rate']} messages/s, {r['processes']} workers, "
        f"seed {r['seed']}",
        f"faults injected: {sum(r['faults'].values())} ({faults})",
        f"sent {r['sent']}, delivered {r['delivered']}, quarantined {r['quarantined']}, "
        f"refused {r['refused']}, lost {r['lost']}, duplicated {r['duplicated']}, "
        f"unanswered {r['unanswered']}",
        f"attempts {r['attempts']} ({r['attempts_refused']} refused and retried: "
        f"{r['refusal_codes']})",
        f"reply latency of accepted attempts: p50 {lat['p50']} ms, p99 {lat['p99']} ms",
        f"peak memory: serve {mem['serve']} MB, serve + workers {mem['serve_and_workers']} MB, "
        f"largest worker {mem['largest_worker']} MB",
        f"serve exit code {r['serve_exit_code']}; {'OK' if r['ok'] else 'FAILED'}",
    ]
    if r["problems"]:
        lines.append(f"problems: {r['problems']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--fault-interval", type=float, default=15.0,
                        help="seconds between injected faults (+-50%%)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    if not 0 < args.duration <= 3600 or not 0 < args.rate <= 500:
        parser.error("--duration must be in (0, 3600] and --rate in (0, 500]")
    result = run(args.duration, args.rate, args.fault_interval, args.seed, args.processes)
    print(json.dumps(result) if args.json else report(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
