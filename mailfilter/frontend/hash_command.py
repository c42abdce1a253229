"""The `hash` command's front end: files in, one record per file out.

Files are read here and fingerprinted in the worker pool, a bounded window of them at a
time, and reported in the order given. A video (by its container signature) gets vPDQ, an
image PDQ and gridhist, anything else its exact hashes only (`"kind"`: video, image, file).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailfilter.errors import WorkerFailure
from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.hashing.exact import exact_hashes
from mailfilter.model import ImageFingerprint
from mailfilter.settings import Settings
from mailfilter.video import (
    NO_VIDEO_STREAM,
    NOT_A_VIDEO,
    VideoFingerprint,
    VideoParams,
    fingerprint_video,
    sniff_container,
)
from mailfilter.workers import WorkerPool

Outcome = ImageFingerprint | VideoFingerprint | OSError

#: Skip reasons that mean "looked at, and it is neither": such a file is reported with its
#: exact hashes only (kind "file"), not as an error.
_NOT_A_PICTURE = frozenset({"not-an-image", NOT_A_VIDEO, NO_VIDEO_STREAM})


@dataclass(frozen=True, slots=True)
class HashParams:
    images: FingerprintParams
    video: VideoParams

    @classmethod
    def from_settings(cls, settings: Settings) -> HashParams:
        return cls(FingerprintParams.from_settings(settings), VideoParams.from_settings(settings))


def fingerprint_any(data: bytes, params: HashParams) -> ImageFingerprint | VideoFingerprint:
    """The worker task: a video (by container signature) or else an image."""
    if sniff_container(data) is not None:
        result = fingerprint_video(data, params.video)
        if result.skipped != NOT_A_VIDEO:
            return result
    return fingerprint_image(data, params.images)


def fingerprint_files(
    files: Sequence[Path], settings: Settings
) -> Iterator[tuple[Path, Outcome]]:
    params = HashParams.from_settings(settings)
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

        task = functools.partial(fingerprint_any, params=params)
        deadline = max(settings.images.deadline, settings.video.deadline)
        for result in pool.map(task, readable(), deadline=deadline):
            yield from unreadable_ahead()
            path, data = order.popleft()
            assert isinstance(data, bytes)
            if isinstance(result, WorkerFailure):
                # The file killed its worker or ran out of time: still report exact hashes.
                failed = (VideoFingerprint if sniff_container(data) else ImageFingerprint)
                result = failed(
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
        "kind": "image",
        "md5": outcome.exact.md5,
        "sha1": outcome.exact.sha1,
        "sha256": outcome.exact.sha256,
    }
    if outcome.skipped in _NOT_A_PICTURE:
        record["kind"] = "file"
        return record
    if isinstance(outcome, VideoFingerprint):
        return _video_record(record, outcome)
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


def _video_record(record: dict[str, Any], outcome: VideoFingerprint) -> dict[str, Any]:
    record["kind"] = "video"
    if outcome.skipped:
        detail = f": {outcome.detail}" if outcome.detail else ""
        record["error"] = f"{outcome.skipped}{detail}"
        return record
    record.update({
        "width": outcome.width,
        "height": outcome.height,
        "format": f"{outcome.container}/{outcome.codec}",
        "duration": outcome.duration,
        "frames": len(outcome.frames),
        "vpdq": outcome.vpdq_compact,
    })
    if outcome.incomplete:
        detail = f": {outcome.detail}" if outcome.detail else ""
        record["incomplete"] = f"{outcome.incomplete}{detail}"
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
