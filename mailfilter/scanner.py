"""The wiring: raw message bytes → extract → fingerprint → match → a `ScanResult`.

Only this module knows the order of the stages. Extraction and fingerprinting run in the
worker pool (hostile MIME, archives and images are CPU and memory hazards); matching is an
in-memory lookup in the current index. The front ends (SMTP proxy, milter, `scan` command)
call `Scanner.scan` and turn the result into replies or output.

Two ways through the pool:

- without a verdict cache, one task per message (`extract_and_fingerprint`): the worker
  extracts and fingerprints every attachment itself, each image under its own deadline
  (`images.deadline`, `workers.time_limit`), and only the small fingerprints come back, never
  the image bytes. Should that task fail as a whole (a worker crash, the memory limit, its
  deadline), the message is scanned again the second way, where each image is its own task,
  so one bad image costs only itself;
- with the cache, the attachments come back from an extract task, are looked up by SHA-256
  here, and only the misses are fingerprinted, one task each.

And one way around it: a small message that is text only (most mail) is walked here, by
`extract_text_only`, which gives up at the first image, container or hidden payload (then
the message goes to the pool as above). Its walk costs less than a worker round trip (35 µs
against ~120 µs of the event loop's time for a 2 KB message) and is bounded by the size
and part limits of text-only mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from mailfilter.errors import WorkerFailure
from mailfilter.extract import extract, extract_text_only
from mailfilter.extract.core import DECLARED_NOT_AN_IMAGE
from mailfilter.fingerprint import (
    FingerprintParams,
    fingerprint_media,
    kind_found,
    merge_video_parts,
)
from mailfilter.hashing.exact import exact_hashes
from mailfilter.images import NO_PIXEL_DATA
from mailfilter.magic import NO_VIDEO_STREAM, NOT_A_VIDEO
from mailfilter.matching.cache import VerdictCache
from mailfilter.matching.index import HashIndex
from mailfilter.matching.lookup import match_fingerprint
from mailfilter.model import (
    Attachment,
    AttachmentKind,
    AttachmentResult,
    ExactHashes,
    Extraction,
    ImageFingerprint,
    Match,
    ScanResult,
    Unscannable,
    Verdict,
)
from mailfilter.settings import ExtractSettings, Settings
from mailfilter.workers import TimeLimitExceeded, WorkerPool, time_limit

IndexProvider = Callable[[], HashIndex]

# Attachments larger than this are hashed (for the verdict cache) in a thread, not on the loop.
_THREAD_HASH_MIN = 1024 * 1024


@dataclass
class ScanTrace:
    """What a caller may want to know about one scan besides its result (metrics, logs,
    quarantine records); filled in by `Scanner.scan` when one is passed.

    `stages`: seconds per stage (`extract`, `fingerprint` — including verdict cache
    look-ups —, `match`); `sizes`: decoded bytes per attachment, by `mime_path`;
    `cache_hits`: attachments whose fingerprint and matches came from the verdict cache.
    """

    stages: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    subject: str | None = None


async def _exact_hashes(data: bytes) -> ExactHashes:
    if len(data) >= _THREAD_HASH_MIN:
        return await asyncio.to_thread(exact_hashes, data)
    return exact_hashes(data)


async def _sha256(data: bytes) -> str:
    if len(data) >= _THREAD_HASH_MIN:
        return (await asyncio.to_thread(hashlib.sha256, data)).hexdigest()
    return hashlib.sha256(data).hexdigest()


#: The decode stage's reason for bytes with no image signature at all. Such a payload only
#: reaches it because it was declared an image (by type or file name); its exact hashes were
#: matched, any container in it was walked and its text searched, so it counts as looked at:
#: a defect (`DECLARED_NOT_AN_IMAGE`), not unscannable.
NOT_AN_IMAGE = "not-an-image"
#: Reasons of the decode stage that mean "nothing of a picture is in these bytes", so the
#: attachment counts as looked at (its exact hashes were matched): a defect each.
LOOKED_AT = {NOT_AN_IMAGE: DECLARED_NOT_AN_IMAGE, NO_PIXEL_DATA: "image-without-pixel-data",
             # (a video container that holds no video: audio only, or not a video at all)
             NO_VIDEO_STREAM: "video-without-video-stream", NOT_A_VIDEO: "not-a-video"}


def _unexamined(fp: ImageFingerprint) -> bool:
    """Whether (part of) an attachment was left unexamined: skipped (other than for having
    no image signature) or examined only in part (`incomplete`)."""
    return fp.incomplete is not None or (fp.skipped is not None and fp.skipped not in LOOKED_AT)


def verdict_of(attachments: Iterable[AttachmentResult],
               unscannable: Iterable[Unscannable]) -> Verdict:
    """A match anywhere wins (on the frames examined of an incomplete image too); else
    anything left unexamined makes the message unscannable."""
    results = list(attachments)
    if any(r.matches for r in results):
        return Verdict.MATCH
    if any(True for _ in unscannable) or any(_unexamined(r.fingerprint) for r in results):
        return Verdict.UNSCANNABLE
    return Verdict.CLEAN


def _image_records(results: Iterable[AttachmentResult]
                   ) -> tuple[tuple[Unscannable, ...], tuple[str, ...]]:
    """What the decode stage adds to the message's records: an unscannable entry per image
    examined only in part (so logs, `scan --json` and quarantine records list it with the
    other reasons), and a defect per declared image that is no image."""
    unscannable = tuple(
        Unscannable(r.mime_path, r.fingerprint.incomplete, r.fingerprint.detail)
        for r in results if r.fingerprint.incomplete)
    defects = tuple(f"{LOOKED_AT[r.fingerprint.skipped]} at {r.mime_path or 'message'}"
                    for r in results if r.fingerprint.skipped in LOOKED_AT)
    return unscannable, defects


WorkerScan = tuple[Extraction, tuple[ImageFingerprint | None, ...], tuple[int, ...], float]
"""What `extract_and_fingerprint` returns: the extraction with the images' `data` left
empty, a fingerprint per attachment (None for a video: its bytes are kept, and its parts
are fingerprinted by several workers at once), their sizes, seconds spent fingerprinting."""

#: A video is split into parts of its timeline decoded by different workers at once, about
#: one part per this many bytes, at most one per worker (one decoder uses one core).
VIDEO_PART_BYTES = 2_000_000


def extract_and_fingerprint(raw: bytes, limits: ExtractSettings,
                            params: FingerprintParams) -> WorkerScan:
    """A worker task: extract, then fingerprint each image in this process, each within
    `params.images.deadline` (else skipped with reason `deadline`, as a task of its own
    would be); videos are left to the caller."""
    extraction = extract(raw, limits)
    started = time.perf_counter()
    fingerprints: list[ImageFingerprint | None] = []
    for a in extraction.attachments:
        if a.kind is AttachmentKind.VIDEO:
            fingerprints.append(None)
            continue
        try:
            with time_limit(params.deadline(a.kind)):
                fp = fingerprint_media(a.data, a.kind, params)
        except TimeLimitExceeded as exc:
            fp = ImageFingerprint(exact=exact_hashes(a.data), skipped="deadline",
                                  detail=f"no result within {exc}")
        fingerprints.append(fp)
    seconds = time.perf_counter() - started
    sizes = tuple(len(a.data) for a in extraction.attachments)
    light = replace(extraction, attachments=tuple(
        a if a.kind is AttachmentKind.VIDEO else replace(a, data=b"")
        for a in extraction.attachments))
    return light, tuple(fingerprints), sizes, seconds


class Scanner:
    """`cache`: the verdict cache (attachment SHA-256 -> fingerprint + matches against the
    current index version), so an image seen before is neither decoded nor matched again."""

    def __init__(self, settings: Settings, pool: WorkerPool, index: IndexProvider,
                 cache: VerdictCache | None = None) -> None:
        self._settings = settings
        self._pool = pool
        self._index = index
        # A cache that stores nothing (TTL 0) is no cache: one worker task per message.
        self._cache = cache if cache is not None and getattr(cache, "ttl", 1.0) > 0 else None
        self._params = FingerprintParams.from_settings(settings)

    async def _extract(self, raw: bytes) -> Extraction:
        try:
            return await self._pool.run(
                extract, raw, self._settings.extract, deadline=self._settings.scan.timeout
            )
        except WorkerFailure as exc:
            # The message itself broke the parser (or ran out of time): it cannot be
            # examined, and retrying would break it again, so it is unscannable, not an error.
            return Extraction(
                attachments=(),
                unscannable=(Unscannable("", f"extract-{exc.reason}", exc.detail),),
            )

    async def _fingerprint(self, attachment: Attachment) -> ImageFingerprint:
        if attachment.kind is AttachmentKind.VIDEO:
            return await self._video(attachment)
        try:
            return await self._pool.run(
                fingerprint_media, attachment.data, attachment.kind, self._params,
                deadline=self._params.deadline(attachment.kind),
            )
        except WorkerFailure as exc:
            return ImageFingerprint(
                exact=exact_hashes(attachment.data), skipped=exc.reason, detail=exc.detail
            )

    async def _video(self, attachment: Attachment) -> ImageFingerprint:
        """A video's fingerprint, its timeline split over the workers (merge_video_parts)."""
        data = attachment.data
        parts = max(1, min(self._pool.processes, -(-len(data) // VIDEO_PART_BYTES)))

        async def part(i: int) -> ImageFingerprint:
            try:
                return await self._pool.run(
                    fingerprint_media, data, attachment.kind, self._params, i, parts,
                    deadline=self._params.deadline(attachment.kind))
            except WorkerFailure as exc:
                return ImageFingerprint(exact=ExactHashes("", "", ""), skipped=exc.reason,
                                        detail=exc.detail)

        found = await asyncio.gather(*(part(i) for i in range(parts)))
        exact = found[0].exact if found[0].exact.sha256 else await _exact_hashes(data)
        return merge_video_parts(found, exact)

    async def _cached_fingerprint(
        self, attachment: Attachment, version: int
    ) -> tuple[ImageFingerprint, tuple[Match, ...] | None]:
        """The fingerprint, and the matches when they came from the cache (else None)."""
        if self._cache is not None:
            hit = await self._cache.aget(await _sha256(attachment.data), version)
            if hit is not None:
                return hit.fingerprint, hit.matches
        return await self._fingerprint(attachment), None

    async def _in_one_task(self, raw: bytes) -> WorkerScan | None:
        """`extract_and_fingerprint` in a worker; None when the task failed as a whole (the
        caller then runs extract and each fingerprint as tasks of their own)."""
        try:
            return await self._pool.run(
                extract_and_fingerprint, raw, self._settings.extract, self._params,
                deadline=self._settings.scan.timeout,
            )
        except WorkerFailure as exc:
            if exc.reason == "worker-result-refused":
                # The worker was not running our code when it answered (worker_results.py):
                # no second try on the same message, whose other tasks might come back
                # clean; unscannable, as a refused extract task is.
                failed = Unscannable("", f"extract-{exc.reason}", exc.detail)
                return Extraction(attachments=(), unscannable=(failed,)), (), (), 0.0
            return None

    async def scan(self, raw: bytes, source: str = "",
                   trace: ScanTrace | None = None) -> ScanResult:
        """Raises TemporaryFailure (before any work) when no index can be had."""
        started = time.perf_counter()
        index = self._index()
        # Most mail is text only: walking it here costs less than a worker round trip.
        inline = extract_text_only(raw, self._settings.extract)
        scanned: WorkerScan | None = None
        if inline is not None:
            scanned = (inline, (), (), 0.0)
        elif self._cache is None:
            scanned = await self._in_one_task(raw)
        sizes: tuple[int, ...]
        if scanned is not None:
            extraction, fingerprints, sizes, fp_seconds = scanned
            found: list[tuple[ImageFingerprint, tuple[Match, ...] | None]] = [
                (fp if fp is not None else await self._video(a), None)
                for a, fp in zip(extraction.attachments, fingerprints, strict=True)]
            fingerprinted = time.perf_counter()
            extracted = fingerprinted - fp_seconds
        else:
            extraction = await self._extract(raw)
            extracted = time.perf_counter()
            found = await asyncio.gather(
                *(self._cached_fingerprint(a, index.version) for a in extraction.attachments)
            )
            fingerprinted = time.perf_counter()
            sizes = tuple(len(a.data) for a in extraction.attachments)
        results = []
        for a, (fp, cached) in zip(extraction.attachments, found, strict=True):
            matches = cached
            if matches is None:
                matches = match_fingerprint(index, fp, self._settings.match)
                if self._cache is not None:
                    await self._cache.aput(fp.exact.sha256, index.version, fp, matches)
            results.append(AttachmentResult(
                mime_path=a.mime_path,
                filename=a.filename,
                content_type=a.content_type,
                fingerprint=fp,
                matches=matches,
                containers=a.containers,
                kind=kind_found(a.kind, fp),
            ))
        for f in extraction.files:  # every other file: its exact hashes
            fp = ImageFingerprint(exact=f.exact)
            results.append(AttachmentResult(
                mime_path=f.mime_path, filename=f.filename, content_type=f.content_type,
                fingerprint=fp, matches=match_fingerprint(index, fp, self._settings.match),
                containers=f.containers, kind=AttachmentKind.FILE,
            ))
        image_unscannable, image_defects = _image_records(results)
        done = time.perf_counter()
        if trace is not None:
            trace.stages.update(extract=extracted - started,
                                fingerprint=fingerprinted - extracted, match=done - fingerprinted)
            trace.sizes.update(
                (a.mime_path, size) for a, size in zip(extraction.attachments, sizes, strict=True))
            trace.sizes.update((f.mime_path, f.size) for f in extraction.files)
            trace.cache_hits += sum(1 for _fp, cached in found if cached is not None)
            trace.subject = extraction.subject
        return ScanResult(
            source=source,
            message_id=extraction.message_id,
            verdict=verdict_of(results, extraction.unscannable),
            attachments=tuple(results),
            unscannable=extraction.unscannable + image_unscannable,
            defects=extraction.defects + image_defects,
            seconds=done - started,
            ambiguities=extraction.ambiguities,
        )
