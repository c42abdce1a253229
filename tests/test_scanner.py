"""The scanner wiring, through the real worker pool: verdicts, and hostile messages that must
end quickly as `unscannable` with the right reason (hang guards, not speed targets)."""

from __future__ import annotations

import asyncio
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from factories import jpeg, message, message_bytes

from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.matching.index import HashIndex, IndexEntry
from mailfilter.model import ScanResult, Verdict
from mailfilter.scanner import Scanner
from mailfilter.settings import Settings, load_settings
from mailfilter.workers import WorkerPool

sys.path.insert(0, str(Path(__file__).resolve().parent / "extract"))
import extract_corpus as ec

SETTINGS: Settings = load_settings(None, {}).settings
KNOWN = jpeg(42)
HANG_GUARD = 20.0  # seconds: far above the real figures; only a hang or a blow-up fails


def known_index() -> HashIndex:
    fp = fingerprint_image(KNOWN, FingerprintParams.from_settings(SETTINGS))
    assert fp.primary is not None and fp.primary.pdq is not None
    return HashIndex.build([IndexEntry("stand-ins", "pdq", fp.primary.pdq, ("test",))])


@pytest.fixture(scope="module")
def scanner() -> Iterator[Scanner]:
    with WorkerPool(processes=2, memory_limit=1024**3) as pool:
        index = known_index()
        yield Scanner(SETTINGS, pool, lambda: index)


def scan(scanner: Scanner, raw: bytes) -> tuple[ScanResult, float]:
    start = time.perf_counter()
    result = asyncio.run(scanner.scan(raw, "test"))
    return result, time.perf_counter() - start


def reasons(result: ScanResult) -> set[str]:
    found = {u.reason for u in result.unscannable}
    found |= {a.fingerprint.skipped for a in result.attachments if a.fingerprint.skipped}
    return found


def test_clean_and_matching(scanner: Scanner) -> None:
    clean, _ = scan(scanner, message_bytes(message(attachments=[("a.jpg", "image/jpeg",
                                                                  jpeg(1))])))
    assert clean.verdict is Verdict.CLEAN and len(clean.attachments) == 1
    hit, _ = scan(scanner, message_bytes(message(attachments=[("k.jpg", "image/jpeg", KNOWN)])))
    assert hit.verdict is Verdict.MATCH
    [match] = hit.attachments[0].matches
    assert (match.list_name, match.algorithm, match.labels) == ("stand-ins", "pdq", ("test",))


def test_match_wins_over_unscannable_parts(scanner: Scanner) -> None:
    raw = message_bytes(message(attachments=[("k.jpg", "image/jpeg", KNOWN),
                                             ("broken.jpg", "image/jpeg", KNOWN[:300])]))
    result, _ = scan(scanner, raw)
    assert result.verdict is Verdict.MATCH


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body)))


def decompression_bomb_png() -> bytes:
    """30000 x 30000 1-bit PNG of zeros: 900 megapixels in about 110 KB."""
    row = b"\x00" * (1 + 30000 // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(30000)) + packer.flush()
    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def test_decompression_bomb_png(scanner: Scanner) -> None:
    raw = message_bytes(message(attachments=[("big.png", "image/png", decompression_bomb_png())]))
    result, seconds = scan(scanner, raw)
    assert result.verdict is Verdict.UNSCANNABLE
    assert reasons(result) == {"too-many-pixels"}
    assert seconds < HANG_GUARD


def test_truncated_jpeg(scanner: Scanner) -> None:
    raw = message_bytes(message(attachments=[("cut.jpg", "image/jpeg", jpeg(3)[:2000])]))
    result, seconds = scan(scanner, raw)
    assert result.verdict is Verdict.UNSCANNABLE
    assert reasons(result) & {"truncated", "corrupt"}
    assert seconds < HANG_GUARD


def test_one_gigabyte_zip(scanner: Scanner) -> None:
    stream, crc = ec.zeros_deflate(1 << 30)
    bomb = ec.raw_zip([("zeros.bin", stream, crc, 1 << 30, len(stream))])
    raw = message_bytes(message(attachments=[("bomb.zip", "application/zip", bomb),
                                             ("k.jpg", "image/jpeg", KNOWN)]))
    result, seconds = scan(scanner, raw)
    assert result.verdict is Verdict.MATCH  # the rest of the message is still scanned
    assert "max-expansion-ratio" in reasons(result)
    assert seconds < HANG_GUARD


def test_hundred_thousand_parts(scanner: Scanner) -> None:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(100_000))
    raw = (b"From: a@example.org\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n")
    result, seconds = scan(scanner, raw)
    assert result.verdict is Verdict.UNSCANNABLE
    assert reasons(result) == {"max-parts"}
    assert seconds < HANG_GUARD


def test_fifty_deep_forwards(scanner: Scanner) -> None:
    raw = message_bytes(message(attachments=[("k.jpg", "image/jpeg", jpeg(5))]))
    for depth in range(50):
        raw = (f"From: a@example.org\r\nSubject: fwd {depth}\r\nMIME-Version: 1.0\r\n"
               "Content-Type: message/rfc822\r\n\r\n").encode() + raw
    result, seconds = scan(scanner, raw)
    assert result.verdict is Verdict.UNSCANNABLE
    assert reasons(result) == {"max-depth"}
    assert seconds < HANG_GUARD


def test_garbage_bytes_are_not_an_error(scanner: Scanner) -> None:
    result, _ = scan(scanner, bytes(range(256)) * 100)
    assert result.verdict in (Verdict.CLEAN, Verdict.UNSCANNABLE)


# --- one worker task per message (no verdict cache) ------------------------------------------


def test_one_task_per_message_gives_each_image_its_own_deadline() -> None:
    """With a deadline no image can meet, every image is skipped as `deadline` by the task
    that extracts them, and the worker is not killed for it."""
    tight = SETTINGS.model_copy(update={"images": SETTINGS.images.model_copy(
        update={"deadline": 0.001})})
    raw = message_bytes(message(attachments=[
        ("a.jpg", "image/jpeg", jpeg(3, 1200, 860)), ("b.jpg", "image/jpeg", jpeg(4))]))
    with WorkerPool(processes=1, memory_limit=1024**3) as pool:
        result = asyncio.run(Scanner(tight, pool, known_index).scan(raw, "test"))
        assert pool.stats().timeouts == 0 and pool.stats().crashes == 0
    assert [a.fingerprint.skipped for a in result.attachments] == ["deadline", "deadline"]
    assert all(a.fingerprint.exact.sha256 for a in result.attachments)
    assert result.verdict is Verdict.UNSCANNABLE


def test_a_refused_reply_gets_no_second_try() -> None:
    """A worker whose answer to the message's one task was refused (it was not running our
    code: worker_results.py) leaves the message unscannable. The same message is not run
    again as separate extract and fingerprint tasks, whose answers could say clean."""
    import worker_tasks

    raw = message_bytes(message(attachments=[("other.jpg", "image/jpeg", jpeg(5))]))
    with WorkerPool(processes=1, memory_limit=1024**3,
                    initializer=worker_tasks.compromise_one_task_scans) as pool:
        result = asyncio.run(Scanner(SETTINGS, pool, known_index).scan(raw, "test"))
        assert pool.stats().refused == 1
    assert result.verdict is Verdict.UNSCANNABLE
    assert reasons(result) == {"extract-worker-result-refused"}


class _TwoTaskScanner(Scanner):
    """As if the one task of every message had failed: the per-image way."""

    async def _in_one_task(self, raw: bytes) -> None:
        return None


def test_one_task_and_per_image_tasks_agree(scanner: Scanner) -> None:
    raw = message_bytes(message(attachments=[
        ("known.jpg", "image/jpeg", KNOWN), ("other.jpg", "image/jpeg", jpeg(5)),
        ("bad.jpg", "image/jpeg", b"\xff\xd8\xff" + b"\0" * 100)]))
    one, _ = scan(scanner, raw)
    with WorkerPool(processes=1, memory_limit=1024**3) as pool:
        index = known_index()
        two = asyncio.run(_TwoTaskScanner(SETTINGS, pool, lambda: index).scan(raw, "test"))
    assert one.verdict is Verdict.MATCH

    def same(r: ScanResult) -> list[object]:  # (a decoder's error text names an address)
        return [(a.mime_path, replace(a.fingerprint, detail=None), a.matches)
                for a in r.attachments]

    assert same(one) == same(two)
    assert one.attachments[2].fingerprint.skipped == "corrupt"
    assert (one.unscannable, one.message_id) == (two.unscannable, two.message_id)
