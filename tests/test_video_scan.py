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


def test_a_video_split_over_the_workers_gives_the_same_fingerprint(
        pool: WorkerPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long video's timeline is decoded in parts by several workers at once and merged:
    the same samples and vPDQ as one worker decoding it all."""
    import mailfilter.scanner as scanner_module

    video = encode(scene_frames(8, FPS, W, H, seed=51), "h264.mp4", FPS)
    whole = scan(pool, photo_list(), "v.mp4", "video/mp4", video).attachments[0].fingerprint
    monkeypatch.setattr(scanner_module, "VIDEO_PART_BYTES", len(video) // 2 + 1)
    split = scan(pool, photo_list(), "v.mp4", "video/mp4", video).attachments[0].fingerprint
    assert split.frame_times == whole.frame_times
    assert split.vpdq == whole.vpdq
    assert split.exact == whole.exact and split.incomplete is None


@pytest.mark.parametrize("parts", [1, 2])
def test_a_video_past_its_budget_is_unscannable_never_clean(
        pool: WorkerPool, monkeypatch: pytest.MonkeyPatch, parts: int) -> None:
    """A video sampled only in part ([video] max_frames here: the deadline, pixels and
    frame-rate limits end the same way) is reported as not scanned with the reason, whole
    or split over the workers, never clean."""
    import mailfilter.scanner as scanner_module

    video = encode(scene_frames(8, FPS, W, H, seed=61), "h264.mp4", FPS)
    if parts > 1:
        monkeypatch.setattr(scanner_module, "VIDEO_PART_BYTES", len(video) // 2 + 1)
    settings = SETTINGS.model_copy(
        update={"video": SETTINGS.video.model_copy(update={"max_frames": 2})})
    scanner = Scanner(settings, pool, lambda: photo_list())
    raw = message_bytes(message(attachments=[("v.mp4", "video/mp4", video)]))
    result = asyncio.run(scanner.scan(raw, "test"))
    assert result.verdict is Verdict.UNSCANNABLE
    [video_result] = result.attachments
    assert video_result.fingerprint.incomplete == "frames-past-limit"
    assert 0 < len(video_result.fingerprint.frame_times) < 8
    assert [u.reason for u in result.unscannable] == ["frames-past-limit"]


def test_merging_parts() -> None:
    from mailfilter.fingerprint import merge_video_parts
    from mailfilter.model import ExactHashes, FrameFingerprint, ImageFingerprint

    exact = ExactHashes("a" * 32, "b" * 40, "c" * 64)
    h1, h2 = "0" * 64, "f" * 64

    def part(times: list[float], hashes: list[str], **kw: object) -> ImageFingerprint:
        frames = tuple(FrameFingerprint(i, False, h, 90, (h,), None)
                       for i, h in enumerate(hashes))
        return ImageFingerprint(exact=exact, image_format="mp4/h264", frames=frames,
                                frame_times=tuple(times), duration=4.0,
                                vpdq=tuple(f"{h},90,{t:.3f}" for h, t in zip(hashes, times,
                                                                            strict=True)),
                                **kw)  # type: ignore[arg-type]

    merged = merge_video_parts([part([0.0, 1.0], [h1, h2]), part([2.0, 3.0], [h2, h1])], exact)
    assert merged.frame_times == (0.0, 1.0, 2.0, 3.0)
    assert [f.frame for f in merged.frames] == [0, 1, 2, 3]
    assert len(merged.vpdq) == 3  # the repeat across the seam is pruned, as within a part
    failed = ImageFingerprint(exact=ExactHashes("", "", ""), skipped="worker-crashed")
    merged = merge_video_parts([part([0.0], [h1]), failed], exact)
    assert merged.incomplete == "worker-crashed" and merged.frame_times == (0.0,)


def test_a_part_that_failed_is_kept_when_part_0_found_no_video() -> None:
    """Part 0 says "not a video" (the video is then taken for a file) while another part's
    worker crashed on the same bytes: the crash is kept, so the attachment counts as left
    unexamined (the message unscannable), not as a file looked at in full."""
    from mailfilter.fingerprint import kind_found, merge_video_parts
    from mailfilter.model import AttachmentKind, ExactHashes, ImageFingerprint
    from mailfilter.scanner import _unexamined

    exact = ExactHashes("a" * 32, "b" * 40, "c" * 64)
    none = ExactHashes("", "", "")
    not_a_video = ImageFingerprint(exact=exact, skipped="not-a-video")
    same = ImageFingerprint(exact=none, skipped="not-a-video")
    crashed = ImageFingerprint(exact=none, skipped="worker-crashed", detail="signal 11")
    merged = merge_video_parts([not_a_video, same], exact)
    assert merged.skipped == "not-a-video" and merged.incomplete is None
    assert not _unexamined(merged)
    merged = merge_video_parts([not_a_video, crashed], exact)
    assert kind_found(AttachmentKind.VIDEO, merged) is AttachmentKind.FILE
    assert (merged.incomplete, merged.detail) == ("worker-crashed", "signal 11")
    assert _unexamined(merged)
