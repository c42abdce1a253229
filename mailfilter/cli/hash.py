"""The `hash` command's front end: files in, one record per file out.

Files are read here and fingerprinted in the worker pool, a bounded window of them at a
time, and reported in the order given. `fingerprint.fingerprint_file` decides what each is:
a video (by its container signature) gets vPDQ, an image PDQ and gridhist, anything else
its exact hashes only (`"kind"`: video, image, file).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailfilter.errors import WorkerFailure
from mailfilter.fingerprint import (
    FingerprintParams,
    MediaFingerprint,
    fingerprint_file,
    media_kind,
)
from mailfilter.hashing.exact import exact_hashes
from mailfilter.model import AttachmentKind, ImageFingerprint
from mailfilter.settings import Settings
from mailfilter.workers import WorkerPool

if TYPE_CHECKING:  # PyAV: imported by the workers that decode videos
    from mailfilter.video import VideoFingerprint

Outcome = MediaFingerprint | OSError


def fingerprint_files(
    files: Sequence[Path], settings: Settings
) -> Iterator[tuple[Path, Outcome]]:
    params = FingerprintParams.from_settings(settings)
    processes = min(len(files), settings.workers.processes or (WorkerPool.default_processes()))
    with WorkerPool(
        processes=max(1, processes),
        memory_limit=settings.workers.memory_limit,
        max_tasks_per_worker=settings.workers.max_tasks_per_worker,
        sandbox=settings.workers.sandbox,
        protect=(settings.quarantine.path, settings.store.path),
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

        task = functools.partial(fingerprint_file, params=params)
        deadline = max(settings.images.deadline, settings.video.deadline)
        for result in pool.map(task, readable(), deadline=deadline):
            yield from unreadable_ahead()
            path, data = order.popleft()
            assert isinstance(data, bytes)
            if isinstance(result, WorkerFailure):
                # The file killed its worker or ran out of time: still report exact hashes.
                result = MediaFingerprint(media_kind(data), ImageFingerprint(
                    exact=exact_hashes(data), skipped=result.reason, detail=result.detail))
            yield path, result
        yield from unreadable_ahead()


def hash_record(path: Path, outcome: Outcome) -> dict[str, Any]:
    """The contract's `hash --json` object."""
    if isinstance(outcome, OSError):
        return {"file": str(path), "error": f"cannot read: {outcome.strerror or outcome}"}
    fp = outcome.fingerprint
    record: dict[str, Any] = {
        "file": str(path),
        "kind": str(outcome.kind),
        "md5": fp.exact.md5,
        "sha1": fp.exact.sha1,
        "sha256": fp.exact.sha256,
    }
    if outcome.kind is AttachmentKind.FILE:
        return record
    if fp.skipped:
        detail = f": {fp.detail}" if fp.detail else ""
        record["error"] = f"{fp.skipped}{detail}"
        return record
    if outcome.kind is AttachmentKind.VIDEO and outcome.video is not None:
        return _video_record(record, outcome.video)
    primary = fp.primary
    record.update({
        "width": fp.width,
        "height": fp.height,
        "format": fp.image_format,
        "frames": fp.frame_count,
        "pdq": primary.pdq if primary else None,
        "pdq_quality": primary.pdq_quality if primary else 0,
        "gridhist": primary.gridhist if primary else None,
    })
    if primary is not None and primary.reason:
        record["reason"] = primary.reason
    trimmed = [f for f in fp.frames if f.trimmed and f.frame == 0]
    if trimmed:
        record["pdq_trimmed"] = trimmed[0].pdq
    return record


def _video_record(record: dict[str, Any], video: VideoFingerprint) -> dict[str, Any]:
    """A video's fields, from the decoder's own record (container and codec apart)."""
    record.update({
        "width": video.width,
        "height": video.height,
        "format": f"{video.container}/{video.codec}",
        "duration": video.duration,
        "frames": len(video.frames),
        "vpdq": video.vpdq_compact,
    })
    if video.incomplete:
        detail = f": {video.detail}" if video.detail else ""
        record["incomplete"] = f"{video.incomplete}{detail}"
    return record


def hash_text(record: dict[str, Any]) -> str:
    """The human-readable form: a header line, then one indented line per hash."""
    lines = [str(record["file"])]
    if "error" in record and "width" not in record:
        lines[0] += f"  error: {record['error']}"
    elif record.get("kind") == "file":
        lines[0] += "  file (not an image or video)"
    elif record.get("kind") == "video":
        lines[0] += (f"  {record['width']}x{record['height']} {record['format']}"
                     f"  {record['duration']:.3f}s  frames sampled {record['frames']}")
        if record.get("incomplete"):
            lines[0] += f"  incomplete: {record['incomplete']}"
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
    if "vpdq" in record:
        lines.append(f"  {'vpdq':<9}{len(record['vpdq'])} features (pdq,quality,seconds)")
        lines.extend(f"    {feature}" for feature in record["vpdq"])
    return "\n".join(lines)
