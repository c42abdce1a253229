"""Worker processes fail under `mailfilter serve`: one is killed (SIGKILL, found through
/proc) while it decodes, and an image needs more memory than `workers.memory_limit`. The
server goes on, the pool replaces the worker, and every message is accounted for: the one
whose worker died is refused 451 (a failure of ours, not a verdict) and delivered on the
sender's retry; the one over the memory limit is unscannable (a limit the image broke)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from email.policy import SMTP
from pathlib import Path

import pytest
from factories import jpeg, message
from proxy.proxy_harness import RecordingSink, running_sink

from faults import procs
from faults.client import deliver, make_message
from faults.heavy import progressive_jpeg
from faults.ledger import SEQ_HEADER, Ledger, account, read_quarantine
from faults.serve import Served, serving
from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.settings import load_settings
from mailfilter.workers import WorkerPool

MiB = 1024 * 1024


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with running_sink() as s:
        yield s


def _heavy_message(seq: str, images: list[tuple[str, bytes]]) -> bytes:
    msg = message(subject=f"heavy {seq}", attachments=[
        (name, "image/jpeg", data) for name, data in images])
    msg[SEQ_HEADER] = seq
    return msg.as_bytes(policy=SMTP)


def _kill_a_busy_worker(s: Served, timeout: float = 30.0) -> int:
    """SIGKILL the first worker seen running that has used 30 ms of CPU since it was
    first seen (so it is in the middle of a task, not just done with one); its pid."""
    first: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in s.workers():
            ticks = procs.cpu_ticks(pid)
            if ticks is None:
                continue
            start = first.setdefault(pid, ticks)
            if (ticks - start) * 1000 / procs.CLOCK_TICKS >= 30 and procs.running(pid):
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.005)
    raise TimeoutError("no worker got busy")


@pytest.mark.slow  # serve, a killed worker and its replacement: 10-15 s
def test_worker_killed_mid_decode(tmp_path: Path, sink: RecordingSink) -> None:
    big = progressive_jpeg(8000)  # ~0.35 s of decoding each
    with serving(tmp_path, sink.address, processes=2) as s:
        before = s.wait_workers(2)
        ledger = Ledger()
        others: list[str] = []
        hit: tuple[str, int] | None = None
        for _ in range(3):  # a kill that lands between two tasks proves nothing: again
            victim = ledger.new_seq()
            heavy = _heavy_message(victim, [("a.jpg", big), ("b.jpg", big), ("c.jpg", big)])
            sender = threading.Thread(target=deliver, args=(ledger, victim, heavy,
                                                            "127.0.0.1", s.port))
            sender.start()
            killed = _kill_a_busy_worker(s)
            for kind in ("text", "photo", "known"):  # other mail meanwhile
                seq = ledger.new_seq()
                deliver(ledger, seq, make_message(seq, kind), "127.0.0.1", s.port)
                others.append(seq)
            sender.join(60)
            assert not sender.is_alive()
            died = [r["msg"] for r in s.log() if f"worker {killed} " in str(r.get("msg"))]
            assert died, f"no log line about worker {killed}"
            if "while running a task" in died[0]:
                hit = victim, killed
                break
        assert hit is not None, "three kills, none of them during a task"
        victim, killed = hit
        assert ledger.last(victim).reply.startswith("451 4.3.0"), ledger.last(victim)
        assert all(ledger.last(q).accepted for q in others)

        after = s.wait_workers(2)
        assert killed not in after and len(set(after) - set(before)) >= 1
        deliver(ledger, victim, heavy, "127.0.0.1", s.port, retries=3)  # the sender's retry
        assert ledger.last(victim).accepted
        result = account(ledger, [m.data for m in sink.messages], read_quarantine(s.quarantine))
        result.assert_exact()
        assert result.quarantined == len(others) // 3
        assert result.delivered == result.sent - result.quarantined
        assert s.terminate() == 0


@pytest.mark.slow  # serve and a decode up to the memory limit: about 10 s
def test_image_needing_more_memory_than_the_limit(tmp_path: Path, sink: RecordingSink) -> None:
    """A 100-megapixel progressive JPEG (allowed by max_pixels) needs ~300 MB of decoder
    memory; with workers.memory_limit at 400 MiB that does not fit. The image is
    unscannable with reason memory-limit (here: quarantined, per on_unscannable), the other
    image of the message is still fingerprinted, and the pool goes on."""
    bomb = progressive_jpeg(10000)
    with serving(tmp_path, sink.address, processes=2,
                 sections='[policy]\non_unscannable = "quarantine"\n',
                 env={"MAILFILTER_WORKERS__MEMORY_LIMIT": "400MiB"}) as s:
        ledger = Ledger()
        seq = ledger.new_seq()
        started = time.monotonic()
        deliver(ledger, seq, _heavy_message(seq, [("big.jpg", bomb), ("ok.jpg", jpeg(5))]),
                "127.0.0.1", s.port)
        assert ledger.last(seq).accepted, ledger.last(seq)
        assert time.monotonic() - started < 30
        [record_path] = sorted(s.quarantine.rglob("*.json"))
        record = json.loads(record_path.read_text())
        skipped = {a["filename"]: a["skipped"] for a in record["attachments"]}
        assert skipped == {"big.jpg": "memory-limit", "ok.jpg": None}, skipped
        assert record["verdict"] == "unscannable"
        for kind in ("photo", "text", "known"):
            seq = ledger.new_seq()
            deliver(ledger, seq, make_message(seq, kind), "127.0.0.1", s.port)
        result = account(ledger, [m.data for m in sink.messages], read_quarantine(s.quarantine))
        result.assert_exact()
        assert (result.delivered, result.quarantined) == (2, 2)
        for pid in s.workers():  # no worker grew past its limit
            assert procs.status_kib(pid, "VmPeak") <= 400 * 1024
        assert s.terminate() == 0


def test_memory_limit_reason_in_the_pool() -> None:
    """The decode stage under the limit itself: `memory-limit` (it was reported as a
    truncated file before: libjpeg says 'broken data stream' when its allocation fails),
    and an image that fits is still decoded in the same worker."""
    params = FingerprintParams.from_settings(load_settings(None, {}).settings)
    with WorkerPool(processes=1, memory_limit=400 * MiB, max_tasks_per_worker=0) as pool:
        fp = pool.submit(fingerprint_image, progressive_jpeg(10000), params,
                         deadline=30).result(timeout=60)
        assert fp.skipped == "memory-limit", (fp.skipped, fp.detail)
        assert len(fp.exact.sha256) == 64  # its exact hashes can still match a list
        assert pool.submit(fingerprint_image, jpeg(6), params,
                           deadline=30).result(timeout=60).skipped is None
        assert pool.stats().crashes == 0
