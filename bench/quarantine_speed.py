"""What holding a message durably costs, and how soon its report arrives.

    python bench/quarantine_speed.py [--messages 200] [--size 250000] [--dir /var/tmp]

1. `QuarantineStore.write` (what the front ends wait for before answering 250): the message
   and its record, each written to a temp file, fsynced, renamed, the directory fsynced;
   with a report job in the outbox (one more file and directory fsync) and without.
2. Report delivery: from the end of the write to the report mail accepted by an SMTP
   server on localhost (aiosmtpd), through the service's `ReportSender` woken by the write,
   one message at a time; and the same burst of messages written at once.

The directory should be on the disk the quarantine will live on: fsync costs are the disk's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from mailfilter.actions.quarantine import QuarantineStore, build_record, new_id
from mailfilter.actions.records import QuarantineRecord
from mailfilter.actions.relay import RelayPool
from mailfilter.actions.report import ReportSender, report_steps
from mailfilter.model import Envelope
from mailfilter.settings import Settings


def ms(samples: list[float]) -> str:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"p50 {statistics.median(s) * 1000:6.2f} ms   p99 {p99 * 1000:6.2f} ms"


def record(entry_id: str, received: float, size: int) -> QuarantineRecord:
    return build_record(entry_id=entry_id, received=received,
                        envelope=Envelope("a@example.org", ("b@example.net",),
                                          client_addr="192.0.2.1"),
                        result=None, action="quarantine", reason="match", policy={},
                        size=size, host="bench")


def bench_writes(root: Path, n: int, raw: bytes, steps: tuple[str, ...]) -> list[float]:
    settings = Settings.model_validate({"quarantine": {"path": str(root)}})
    store = QuarantineStore(settings.quarantine)
    samples = []
    for _ in range(n):
        now = time.time()
        entry_id = new_id(now)
        rec = record(entry_id, now, len(raw))
        started = time.perf_counter()
        store.write(entry_id, raw, rec, now, steps)
        samples.append(time.perf_counter() - started)
    return samples


class Sink:
    def __init__(self) -> None:
        self.arrived: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.arrived.append(time.perf_counter())
        return "250 2.0.0 Ok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench_reports(root: Path, n: int, raw: bytes) -> tuple[list[float], float]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    settings = Settings.model_validate({
        "smtp": {"next_hop": f"127.0.0.1:{port}", "hostname": "bench.test",
                 "next_hop_starttls": "never"},
        "quarantine": {"path": str(root)},
        "report": {"to": ["abuse@example.org"], "from": "mf@example.org"}})
    store = QuarantineStore(settings.quarantine)
    relay = RelayPool(settings.smtp, "bench.test")
    sender = ReportSender(settings, relay)
    await sender.start()
    steps = report_steps(settings)
    latencies = []
    try:
        for _ in range(n):  # one at a time: write, wake, wait for the report
            now = time.time()
            entry_id = new_id(now)
            await asyncio.to_thread(store.write, entry_id, raw, record(entry_id, now, len(raw)),
                                    now, steps)
            written = time.perf_counter()
            sender.wake()
            seen = len(sink.arrived)
            while len(sink.arrived) == seen:
                await asyncio.sleep(0.0005)
            latencies.append(sink.arrived[-1] - written)
        started = time.perf_counter()  # a burst: all written, then delivered
        seen = len(sink.arrived)
        for _ in range(n):
            now = time.time()
            entry_id = new_id(now)
            store.write(entry_id, raw, record(entry_id, now, len(raw)), now, steps)
        sender.wake()
        while len(sink.arrived) < seen + n or store.jobs():
            await asyncio.sleep(0.005)
        burst = time.perf_counter() - started
    finally:
        await sender.stop()
        await relay.close()
        controller.stop()
    return latencies, burst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=250_000, help="message size in bytes")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    raw = os.urandom(args.size // 2).hex().encode()[: args.size]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="mf-qbench-") as tmp:
        base = Path(tmp)
        print(f"{args.messages} messages of {args.size:,} bytes in {base}")
        print("write, no report job:     ", ms(bench_writes(base / "a", args.messages, raw, ())))
        print("write + report job:       ",
              ms(bench_writes(base / "b", args.messages, raw, ("mail", "status"))))
        latencies, burst = asyncio.run(bench_reports(base / "c", args.messages, raw))
        print("write -> report accepted: ", ms(latencies))
        print(f"burst of {args.messages} reports:      {burst:.2f} s "
              f"({args.messages / burst:.0f} reports/s, writes included)")


if __name__ == "__main__":
    main()
