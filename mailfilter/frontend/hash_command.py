"""The `hash` command's front end: image files in, one record per file out.

Files are read here and fingerprinted in the worker pool, a bounded window of them at a
time, and reported in the order given.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mailfilter.errors import WorkerFailure
from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.hashing.exact import exact_hashes
from mailfilter.model import ImageFingerprint
from mailfilter.settings import Settings
from mailfilter.workers import WorkerPool

Outcome = ImageFingerprint | OSError


def fingerprint_files(
    files: Sequence[Path], settings: Settings
) -> Iterator[tuple[Path, Outcome]]:
    params = FingerprintParams.from_settings(settings)
    processes = min(len(files), settings.workers.processes or (WorkerPool.default_processes()))
    with WorkerPool(
        processes=max(1, processes),
        memory_limit=settings.workers.memory_limit,
        max_tasks_per_worker=settings.workers.max_tasks_per_worker,
    ) as pool:
        # Files are read as the pool asks for the next one; `order` keeps every file, readable
        # or not, in the order given, so results (which come back in order) pair up with it.
        order: collections.deque[tuple[Path, bytes | OSError]] = collections.deque()

        def readable() -> Iterator[bytes]:
            for path in files:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    order.append((path, exc))
                    continue
                order.append((path, data))
                yield data

        def unreadable_ahead() -> Iterator[tuple[Path, Outcome]]:
            while order and isinstance(order[0][1], OSError):
                path, error = order.popleft()
                assert isinstance(error, OSError)
                yield path, error

        task = functools.partial(fingerprint_image, params=params)
        for result in pool.map(task, readable(), deadline=settings.images.deadline):
            yield from unreadable_ahead()
            path, data = order.popleft()
            assert isinstance(data, bytes)
            if isinstance(result, WorkerFailure):
                # The image killed its worker or ran out of time: still report exact hashes.
                result = ImageFingerprint(
                    exact=exact_hashes(data), skipped=result.reason, detail=result.detail
                )
            yield path, result
        yield from unreadable_ahead()


def hash_record(path: Path, outcome: Outcome) -> dict[str, Any]:
    """The contract's `hash --json` object."""
    if isinstance(outcome, OSError):
        return {"file": str(path), "error": f"cannot read: {outcome.strerror or outcome}"}
    record: dict[str, Any] = {
        "file": str(path),
        "md5": outcome.exact.md5,
        "sha1": outcome.exact.sha1,
        "sha256": outcome.exact.sha256,
    }
    if outcome.skipped:
        detail = f": {outcome.detail}" if outcome.detail else ""
        record["error"] = f"{outcome.skipped}{detail}"
        return record
    primary = outcome.primary
    record.update({
        "width": outcome.width,
        "height": outcome.height,
        "format": outcome.image_format,
        "frames": outcome.frame_count,
        "pdq": primary.pdq if primary else None,
        "pdq_quality": primary.pdq_quality if primary else 0,
        "gridhist": primary.gridhist if primary else None,
    })
    if primary is not None and primary.reason:
        record["reason"] = primary.reason
    trimmed = [f for f in outcome.frames if f.trimmed and f.frame == 0]
    if trimmed:
        record["pdq_trimmed"] = trimmed[0].pdq
    return record


def hash_text(record: dict[str, Any]) -> str:
    """The human-readable form: a header line, then one indented line per hash."""
    lines = [str(record["file"])]
    if "error" in record and "width" not in record:
        lines[0] += f"  error: {record['error']}"
    else:
        lines[0] += (f"  {record['width']}x{record['height']} {record['format']}"
                     f"  frames {record['frames']}")
    for key in ("md5", "sha1", "sha256"):
        if key in record:
            lines.append(f"  {key:<9}{record[key]}")
    if "pdq_quality" in record:
        pdq = record["pdq"] or f"none ({record.get('reason', 'no hash')})"
        lines.append(f"  {'pdq':<9}{pdq}  quality {record['pdq_quality']}")
        if record.get("pdq_trimmed"):
            lines.append(f"  {'pdq-trim':<9}{record['pdq_trimmed']}  (borders cut)")
        lines.append(f"  {'gridhist':<9}{record['gridhist'] or 'none (too little information)'}")
    return "\n".join(lines)
