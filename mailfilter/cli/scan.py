"""The `scan` command's front end: messages on disk → scanner → one record per message.

Several messages are in flight at once so both cores stay busy; results are still printed
in the order the messages were read. A progress line is drawn on a terminal only.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mailfilter.actions.report.text import distance_text
from mailfilter.cli.command_line import counted, rate_text
from mailfilter.cli.mailbox import count_messages, iter_messages
from mailfilter.matching.backends import open_store
from mailfilter.matching.formats import parse_file
from mailfilter.matching.index import HashIndex, IndexEntry
from mailfilter.model import AttachmentKind, ScanResult, Verdict
from mailfilter.scanner import LOOKED_AT, Scanner
from mailfilter.settings import Settings
from mailfilter.workers import WorkerPool


@dataclass
class ScanSummary:
    messages: int = 0
    images: int = 0
    files: int = 0
    matches: int = 0
    unscannable: int = 0
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def add(self, result: ScanResult) -> None:
        self.messages += 1
        self.images += sum(1 for a in result.attachments if a.kind is AttachmentKind.IMAGE)
        self.files += sum(1 for a in result.attachments if a.kind is not AttachmentKind.IMAGE)
        self.matches += result.verdict is Verdict.MATCH
        self.unscannable += result.verdict is Verdict.UNSCANNABLE

    def line(self) -> str:
        rate = self.messages / self.seconds if self.seconds > 0 else 0.0
        return (f"{counted(self.messages, 'message')}, {counted(self.images, 'image')}, "
                f"{counted(self.files, 'other file')}, {self.matches} matched, "
                f"{self.unscannable} unscannable, {counted(len(self.errors), 'error')}, "
                f"{self.seconds:.1f} s ({rate_text(rate)} messages/s)")

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "images": self.images, "files": self.files,
                "matched": self.matches,
                "unscannable": self.unscannable, "errors": len(self.errors),
                "seconds": round(self.seconds, 3)}


def scan_record(result: ScanResult) -> dict[str, Any]:
    """The contract's `scan --json` object."""
    attachments = [{**a.as_json(), "matches": [m.as_json() for m in a.matches]}
                   for a in result.attachments]
    return {
        "source": result.source,
        "message_id": result.message_id,
        "verdict": result.verdict.value,
        "attachments": attachments,
        "unscannable": [u.as_json() for u in result.unscannable],
        "defects": list(result.defects),
        "ambiguities": list(result.ambiguities),
        "seconds": round(result.seconds, 4),
    }


def scan_text(result: ScanResult) -> str:
    """One line per message, then one indented line per match or reason."""
    images = sum(1 for a in result.attachments if a.kind is AttachmentKind.IMAGE)
    files = len(result.attachments) - images
    lines = [f"{result.source}: {result.verdict.value} ({counted(images, 'image')}, "
             f"{counted(files, 'other file')})"]
    for a in result.attachments:
        for m in a.matches:
            lines.append(f"  {a.mime_path} {a.filename or '-'}: {m.algorithm} match in list "
                         f"{m.list_name!r} at distance {distance_text(m.distance)}"
                         + (f" labels {','.join(m.labels)}" if m.labels else ""))
        if a.fingerprint.skipped and a.fingerprint.skipped not in LOOKED_AT:  # (a defect)
            lines.append(f"  {a.mime_path} {a.filename or '-'}: not examined: "
                         f"{a.fingerprint.skipped}")
    for u in result.unscannable:
        lines.append(f"  {u.mime_path or 'message'}: not examined: {u.reason}"
                     + (f" ({u.detail})" if u.detail else ""))
    return "\n".join(lines)


class Progress:
    """A single redrawn line on stderr, at most five times a second; silent when off."""

    def __init__(self, enabled: bool, total: int | None, stream: TextIO = sys.stderr) -> None:
        self.enabled = enabled
        self.total = total
        self.stream = stream
        self._last = 0.0

    def update(self, summary: ScanSummary, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.2):
            return
        self._last = now
        done = f"{summary.messages}/{self.total}" if self.total else str(summary.messages)
        rate = summary.messages / summary.seconds if summary.seconds > 0 else 0.0
        self.stream.write(f"\r\x1b[Kscanning: {done} messages, {summary.images} images, "
                          f"{summary.matches} matched, {rate_text(rate)}/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def load_scan_index(settings: Settings, hash_files: Sequence[Path],
                    fmt: str | None = None) -> HashIndex:
    """The configured store's lists, or only the given list files (each a list named after
    its file), for scanning without a store."""
    if not hash_files:
        store = open_store(settings.store)
        try:
            return store.load_index()
        finally:
            store.close()
    entries = [
        IndexEntry(path.name, algorithm, value, labels)
        for path in hash_files
        for batch in parse_file(path, fmt, pdq_min_quality=settings.match.pdq_min_quality)
        for algorithm, value, labels, _added in batch.iter_entries()
    ]
    return HashIndex.build(entries)


def _sources(paths: Sequence[Path], summary: ScanSummary) -> Iterator[tuple[str, bytes]]:
    for path in paths:
        try:
            yield from iter_messages([path])
        except OSError as exc:
            summary.errors.append(f"{path}: {exc.strerror or exc}")


async def _scan_all(
    paths: Sequence[Path], scanner: Scanner, in_flight: int, summary: ScanSummary,
    emit: Callable[[ScanResult], None], progress: Progress,
) -> None:
    window: collections.deque[asyncio.Task[ScanResult]] = collections.deque()

    async def drain_one() -> None:
        result = await window.popleft()
        summary.add(result)
        emit(result)
        progress.update(summary)

    for source, raw in _sources(paths, summary):
        window.append(asyncio.ensure_future(scanner.scan(raw, source)))
        if len(window) >= in_flight:
            await drain_one()
    while window:
        await drain_one()


def run_scan(
    paths: Sequence[Path], settings: Settings, index: HashIndex, *, as_json: bool,
    verbose: bool, out: TextIO, err: TextIO,
) -> ScanSummary:
    summary = ScanSummary()
    progress = Progress(
        enabled=err.isatty() and not as_json,
        total=count_messages(paths) if err.isatty() and not as_json else None,
        stream=err,
    )

    def emit(result: ScanResult) -> None:
        if as_json:
            out.write(json.dumps(scan_record(result), ensure_ascii=False) + "\n")
        elif verbose or result.verdict is not Verdict.CLEAN:
            progress.close()
            out.write(scan_text(result) + "\n")
        out.flush()

    protect = (settings.quarantine.path, settings.store.path)
    with WorkerPool.from_settings(settings.workers, protect) as pool:
        scanner = Scanner(settings, pool, lambda: index)
        in_flight = 4 * pool.stats().processes
        asyncio.run(_scan_all(paths, scanner, in_flight, summary, emit, progress))
    progress.close()
    for error in summary.errors:
        err.write(f"mailfilter: {error}\n")
    return summary
