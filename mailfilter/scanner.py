"""The wiring: raw message bytes → extract → fingerprint → match → a `ScanResult`.

Only this module knows the order of the stages. Extraction and fingerprinting run in the
worker pool (hostile MIME, archives and images are CPU and memory hazards); matching is an
in-memory lookup in the current index. The front ends (SMTP proxy, milter, `scan` command)
call `Scanner.scan` and turn the result into replies or output.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from mailfilter.errors import WorkerFailure
from mailfilter.extract import extract
from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.hashing.exact import exact_hashes
from mailfilter.matching.index import HashIndex
from mailfilter.matching.lookup import match_fingerprint
from mailfilter.model import (
    Attachment,
    AttachmentResult,
    Extraction,
    ImageFingerprint,
    ScanResult,
    Unscannable,
    Verdict,
)
from mailfilter.settings import Settings
from mailfilter.workers import WorkerPool

IndexProvider = Callable[[], HashIndex]


def verdict_of(attachments: Iterable[AttachmentResult],
               unscannable: Iterable[Unscannable]) -> Verdict:
    """A match anywhere wins; else anything left unexamined makes the message unscannable."""
    results = list(attachments)
    if any(r.matches for r in results):
        return Verdict.MATCH
    if any(True for _ in unscannable) or any(r.fingerprint.skipped for r in results):
        return Verdict.UNSCANNABLE
    return Verdict.CLEAN


class Scanner:
    def __init__(self, settings: Settings, pool: WorkerPool, index: IndexProvider) -> None:
        self._settings = settings
        self._pool = pool
        self._index = index
        self._params = FingerprintParams.from_settings(settings)

    async def _extract(self, raw: bytes) -> Extraction:
        try:
            return await self._pool.run(
                extract, raw, self._settings.extract, deadline=self._settings.smtp.scan_timeout
            )
        except WorkerFailure as exc:
            # The message itself broke the parser (or ran out of time): it cannot be
            # examined, and retrying would break it again, so it is unscannable, not an error.
            return Extraction(
                attachments=(),
                unscannable=(Unscannable("", f"extract-{exc.reason}", exc.detail),),
            )

    async def _fingerprint(self, attachment: Attachment) -> ImageFingerprint:
        try:
            return await self._pool.run(
                fingerprint_image, attachment.data, self._params,
                deadline=self._settings.images.deadline,
            )
        except WorkerFailure as exc:
            return ImageFingerprint(
                exact=exact_hashes(attachment.data), skipped=exc.reason, detail=exc.detail
            )

    async def scan(self, raw: bytes, source: str = "") -> ScanResult:
        started = time.perf_counter()
        extraction = await self._extract(raw)
        fingerprints = await asyncio.gather(
            *(self._fingerprint(a) for a in extraction.attachments)
        )
        index = self._index()
        results = tuple(
            AttachmentResult(
                mime_path=a.mime_path,
                filename=a.filename,
                content_type=a.content_type,
                fingerprint=fp,
                matches=match_fingerprint(index, fp, self._settings.match),
                containers=a.containers,
            )
            for a, fp in zip(extraction.attachments, fingerprints, strict=True)
        )
        return ScanResult(
            source=source,
            message_id=extraction.message_id,
            verdict=verdict_of(results, extraction.unscannable),
            attachments=results,
            unscannable=extraction.unscannable,
            defects=extraction.defects,
            seconds=time.perf_counter() - started,
        )
