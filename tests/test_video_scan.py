"""Videos through the whole scan (issue 16, items 4 and 5): the extract stage hands a video
on to the decode stage, its sampled frames are looked up in the image lists (a slideshow
that shows a listed photo for two seconds matches, with the time of the frame), its vPDQ
in the video lists (a transcode of a listed video matches, an unrelated video does not),
and a video container without video (audio only) is a file with its exact hashes."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from factories import message, message_bytes, photo_like
from PIL import Image
from video_factories import audio_only_mp4, encode, scene_frames

from mailfilter.fingerprint import FingerprintParams, fingerprint_image, fingerprint_media
from mailfilter.matching.formats import parse_stream
from mailfilter.matching.index import HashIndex, IndexEntry
from mailfilter.model import AttachmentKind, ScanResult, Verdict
from mailfilter.scanner import Scanner
from mailfilter.settings import Settings
from mailfilter.workers import WorkerPool

SETTINGS = Settings()
PARAMS = FingerprintParams.from_settings(SETTINGS)
W, H, FPS = 320, 240, 10
LISTED_PHOTO = photo_like(777, W, H)


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def slideshow() -> bytes:
    """Two seconds of other footage, the listed photo for two seconds, two more seconds."""
    before = scene_frames(2, FPS, W, H, seed=31)
    still = [np.asarray(LISTED_PHOTO)] * (2 * FPS)
    after = scene_frames(2, FPS, W, H, seed=32)
    return encode(before + still + after, "h264.mp4", FPS)


def listed_video_frames(seed: int = 41) -> list[np.ndarray]:
    return scene_frames(8, FPS, W, H, seed=seed)


def vpdq_list(video: bytes) -> HashIndex:
    fp = fingerprint_media(video, AttachmentKind.VIDEO, PARAMS)
    assert fp.vpdq, fp.skipped
    text = "vpdq " + json.dumps(list(fp.vpdq)) + "\n"
    entries = [IndexEntry("videos", algorithm, value, labels)
               for batch in parse_stream(io.BytesIO(text.encode()), "hma")
               for algorithm, value, labels, _added in batch.iter_entries()]
    return HashIndex.build(entries)


def photo_list() -> HashIndex:
    fp = fingerprint_image(png(LISTED_PHOTO), PARAMS)
    assert fp.primary is not None and fp.primary.pdq
    return HashIndex.build([IndexEntry("photos", "pdq", fp.primary.pdq)])


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(processes=2, memory_limit=SETTINGS.workers.memory_limit) as p:
        yield p


def scan(pool: WorkerPool, index: HashIndex, name: str, ctype: str, data: bytes) -> ScanResult:
    scanner = Scanner(SETTINGS, pool, lambda: index)
    raw = message_bytes(message(attachments=[(name, ctype, data)]))
    return asyncio.run(scanner.scan(raw, "test"))


def test_a_slideshow_showing_a_listed_photo_matches_with_the_frame_time(
        pool: WorkerPool) -> None:
    result = scan(pool, photo_list(), "show.mp4", "video/mp4", slideshow())
    assert result.verdict is Verdict.MATCH
    [video] = [a for a in result.attachments if a.kind is AttachmentKind.VIDEO]
    assert video.fingerprint.duration == pytest.approx(6.0, abs=0.3)
    [match] = video.matches
    assert match.algorithm == "pdq" and match.at is not None and 2.0 <= match.at < 4.0


def test_a_transcode_of_a_listed_video_matches_by_vpdq(pool: WorkerPool) -> None:
    frames = listed_video_frames()
    index = vpdq_list(encode(frames, "h264.mp4", FPS))
    smaller = [np.asarray(Image.fromarray(f).resize((256, 192), Image.Resampling.LANCZOS))
               for f in frames]
    result = scan(pool, index, "copy.webm", "video/webm", encode(smaller, "vp9.webm", FPS))
    assert result.verdict is Verdict.MATCH
    [match] = [m for a in result.attachments for m in a.matches]
    assert (match.list_name, match.algorithm) == ("videos", "vpdq")
    assert match.distance <= 0.2


def test_an_unrelated_video_does_not_match(pool: WorkerPool) -> None:
    index = vpdq_list(encode(listed_video_frames(), "h264.mp4", FPS))
    other = encode(listed_video_frames(seed=99), "h264.mp4", FPS)
    result = scan(pool, index, "other.mp4", "video/mp4", other)
    assert result.verdict is Verdict.CLEAN, [a.matches for a in result.attachments]
    [video] = result.attachments
    assert video.kind is AttachmentKind.VIDEO and len(video.fingerprint.vpdq) >= 6


def test_audio_only_is_a_file_looked_at(pool: WorkerPool) -> None:
    result = scan(pool, photo_list(), "song.m4a", "audio/mp4", audio_only_mp4())
    assert result.verdict is Verdict.CLEAN, (result.unscannable, result.attachments)
    [item] = result.attachments
    assert item.kind is AttachmentKind.FILE
