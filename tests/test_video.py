"""The video decode stage (mailfilter.video): containers and codecs read, the time grid,
limits ending in partial results, hostile files ending as defined skip reasons."""

from __future__ import annotations

import dataclasses
import io
import itertools
import time
from pathlib import Path

import av
import numpy as np
import pytest

from mailfilter import video
from mailfilter.hashing.pdq import pdq_from_luma
from mailfilter.hashing.vpdq import VpdqFeature, luma_from_rgb, prune
from mailfilter.settings import Settings, VideoSettings
from mailfilter.video import VideoFingerprint, VideoParams, fingerprint_video, sniff_container
from tests.factories import jpeg
from tests.video_factories import KINDS, audio_only_mp4, clip, encode, scene_frames

PARAMS = VideoParams.from_settings(Settings())
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "vpdq"


def fingerprint(data: bytes, **limits: object) -> VideoFingerprint:
    settings = VideoSettings(**limits)  # type: ignore[arg-type]
    return fingerprint_video(data, VideoParams(video=settings))


@pytest.fixture(scope="module")
def h264() -> bytes:
    return clip("h264.mp4", seconds=5.0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_container_and_codec_is_sampled_once_a_second(kind: str) -> None:
    size = (352, 288) if kind.startswith("h263") else (320, 240)
    result = fingerprint_video(clip(kind, width=size[0], height=size[1]), PARAMS)
    assert result.skipped is None and result.incomplete is None, result.detail
    assert (result.width, result.height) == size
    assert result.duration == pytest.approx(3.0, abs=0.1)
    times = [frame.timestamp for frame in result.frames]
    assert len(times) == 3
    # A sample is the first decoded frame at or after its grid time (non-reference frames
    # are not decoded, so it may be a frame or two late).
    for grid, got in zip((0.0, 1.0, 2.0), times, strict=True):
        assert grid <= got < grid + 0.2
    assert len(result.vpdq) == 3  # three different scenes: nothing pruned
    assert all(f.quality >= 50 for f in result.vpdq)
    assert [VpdqFeature.from_str(s) for s in result.vpdq_compact] == list(result.vpdq)


def test_frames_per_second_sets_the_grid(h264: bytes) -> None:
    result = fingerprint(h264, frames_per_second=2.0)
    assert len(result.frames) == 10
    assert result.incomplete is None


def test_a_still_video_prunes_to_one_feature_but_keeps_every_frame() -> None:
    still = encode(scene_frames(4.0, 25, 320, 240, still=True))
    result = fingerprint_video(still, PARAMS)
    assert len(result.frames) == 4
    assert len(result.vpdq) == 1


def test_letterboxed_frames_also_have_a_trimmed_fingerprint() -> None:
    boxed = clip("h264.mp4", seconds=2.0, width=320, height=240, bars=40)
    result = fingerprint_video(boxed, PARAMS)
    for frame in result.frames:
        assert [f.trimmed for f in frame.frames] == [False, True]
        assert frame.frames[1].pdq is not None


def test_past_max_frames_is_partial_with_the_frames_so_far(h264: bytes) -> None:
    result = fingerprint(h264, max_frames=2)
    assert result.incomplete == video.FRAMES_PAST_LIMIT
    assert len(result.frames) == 2 and result.skipped is None


def test_exactly_max_frames_is_complete(h264: bytes) -> None:
    assert fingerprint(h264, max_frames=5).incomplete is None


def test_deadline_gives_a_partial_result(h264: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    convert = video._rgb

    def slow_rgb(frame: av.VideoFrame) -> np.ndarray:
        now[0] += 1.0  # each sampled frame takes a second
        return convert(frame)

    monkeypatch.setattr(video.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(video, "_rgb", slow_rgb)
    result = fingerprint(h264, deadline=3.0)
    assert result.incomplete == video.DEADLINE
    assert 0 < len(result.frames) < 5


def test_deadline_before_any_frame_is_a_skip(h264: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(step=100.0)
    monkeypatch.setattr(video.time, "monotonic", lambda: next(clock))
    assert fingerprint(h264).skipped == video.DEADLINE


@pytest.mark.parametrize(("data", "reason"), [
    (b"", video.NOT_A_VIDEO),
    (b"hello, world" * 100, video.NOT_A_VIDEO),
    (b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40, video.CORRUPT),
    (b"\x1a\x45\xdf\xa3" + b"\xff" * 5000, video.CORRUPT),
    (b"RIFF\x00\x10\x00\x00AVI LIST" + b"\x00" * 4000, video.CORRUPT),
])
def test_garbage_is_a_defined_skip(data: bytes, reason: str) -> None:
    result = fingerprint_video(data, PARAMS)
    assert result.skipped == reason
    assert result.exact.sha256  # exact hashes are always there
    assert not result.frames and not result.vpdq


def test_images_are_not_videos() -> None:
    assert sniff_container(jpeg(1)) is None
    assert fingerprint_video(jpeg(1), PARAMS).skipped == video.NOT_A_VIDEO


def test_a_file_without_video_is_no_video_stream() -> None:
    assert fingerprint_video(audio_only_mp4(), PARAMS).skipped == video.NO_VIDEO_STREAM


def test_unsupported_codec() -> None:
    frames = scene_frames(1.0, 5, 64, 64)
    out = io.BytesIO()
    with av.open(out, mode="w", format="matroska") as box:
        stream = box.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    result = fingerprint_video(out.getvalue(), PARAMS)
    assert result.skipped == video.UNSUPPORTED_FORMAT
    assert "ffv1" in result.detail


def test_limits_on_bytes_and_pixels(h264: bytes) -> None:
    assert fingerprint(h264, max_bytes=1000).skipped == video.TOO_LARGE
    assert fingerprint(h264, max_pixels=320 * 240 - 1).skipped == video.TOO_MANY_PIXELS


def test_lying_container_dimensions_end_defined() -> None:
    """A Matroska header claiming 65535 x 65535 for a 320 x 240 stream: refused as too many
    pixels, or read at the real size: never decoded at the claimed size."""
    data = bytearray(encode(scene_frames(1.0, 25, 320, 240), "hevc.mkv"))
    width_at = data.find(b"\xb0\x82\x01\x40")  # PixelWidth, 2 bytes, 320
    height_at = data.find(b"\xba\x81\xf0")  # PixelHeight, 1 byte, 240
    assert width_at > 0 and height_at > 0
    data[width_at + 2:width_at + 4] = b"\xff\xff"
    data[height_at + 2] = 0xFF
    started = time.monotonic()
    result = fingerprint_video(bytes(data), PARAMS)
    assert time.monotonic() - started < 10
    if result.skipped is not None:
        assert result.skipped in (video.TOO_MANY_PIXELS, video.CORRUPT)
    else:
        assert all(f.frames[0].pdq for f in result.frames)


def test_a_truncated_file_is_never_complete(h264: bytes) -> None:
    for cut in (len(h264) // 2, len(h264) * 3 // 4, 200):
        result = fingerprint_video(h264[:cut], PARAMS)
        assert result.skipped is not None or result.incomplete is not None, cut


def test_hours_of_tiny_frames_end_at_max_frames() -> None:
    """16 x 16 frames a minute apart for 3 hours: the cap on sampled frames ends it."""
    frames = [np.full((16, 16, 3), (i * 7) % 256, np.uint8) for i in range(200)]
    data = encode(frames, "mjpeg.avi", fps=1, pts_step=60)
    started = time.monotonic()
    result = fingerprint(data, max_frames=50)
    assert time.monotonic() - started < 10
    assert result.incomplete == video.FRAMES_PAST_LIMIT
    assert len(result.frames) == 50
    assert all(f.frames[0].reason == "too-small" for f in result.frames)


def test_many_tiny_frames_are_sampled_on_the_grid() -> None:
    frames = [np.full((16, 16, 3), i % 256, np.uint8) for i in range(2000)]
    data = encode(frames, "h264.mp4", fps=500)
    result = fingerprint_video(data, PARAMS)
    assert [round(f.timestamp) for f in result.frames] == [0, 1, 2, 3]


class _LyingIndex:
    """A demuxer that flags the packets numbered in `fake` as keyframes (a lying index;
    FFmpeg's muxers and parsers correct such flags, so the lie is told here)."""

    def __init__(self, box: av.container.InputContainer, fake: set[int]) -> None:
        self._box, self._fake = box, fake

    def __getattr__(self, name: str) -> object:
        return getattr(self._box, name)

    def demux(self, stream: object) -> object:
        for index, packet in enumerate(self._box.demux(stream)):  # type: ignore[call-overload]
            if index in self._fake:
                packet.is_keyframe = True
            yield packet


def _samples(data: bytes, gating: bool, fake_keyframes: frozenset[int] = frozenset()
             ) -> tuple[list[tuple[float, str]], int, bool]:
    outcome = video.SamplingOutcome()
    run = video._Run(limits=VideoSettings(), outcome=outcome, started=time.monotonic())
    kind = sniff_container(data)
    assert kind is not None
    box = video._open(data, kind)
    samples = video._sample(_LyingIndex(box, set(fake_keyframes)), kind,  # type: ignore[arg-type]
                            run, gating)
    found = []
    while True:
        try:
            sample = next(samples)
        except StopIteration as end:
            lied = bool(end.value)
            break
        found.append((sample.timestamp, pdq_from_luma(luma_from_rgb(sample.rgb)).hash))
    box.close()
    return found, outcome.decoded, lied


def test_gop_gating_samples_the_same_frames_and_decodes_fewer() -> None:
    # 1 s keyframe interval (what phones write), B-frames: groups between grid times skipped.
    frames = scene_frames(6.0, 25, 320, 240, scene_seconds=0.5)
    data = encode(frames, "h264.mp4", fps=25, gop=25)
    plain, plain_decoded, _ = _samples(data, gating=False)
    gated, gated_decoded, lied = _samples(data, gating=True)
    assert not lied
    assert gated == plain and len(plain) == 6
    assert gated_decoded < plain_decoded / 2


def test_a_lying_keyframe_flag_is_caught() -> None:
    frames = scene_frames(4.0, 25, 320, 240, scene_seconds=0.5)
    data = encode(frames, "h264.mp4", fps=25, gop=250)
    plain, _, _ = _samples(data, gating=False)
    # Packet 45 (a P-frame) said to be a keyframe: the held packets before it are
    # dropped, the "keyframe" does not decode as one, and the caller must decode it all.
    _, _, lied = _samples(data, gating=True, fake_keyframes=frozenset({45}))
    assert lied
    honest, _, lied = _samples(data, gating=True)
    assert not lied and honest == plain


def test_after_a_lie_the_video_is_decoded_again_without_gating(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frames = scene_frames(4.0, 25, 320, 240, scene_seconds=0.5)
    data = encode(frames, "h264.mp4", fps=25, gop=250)
    plain, _, _ = _samples(data, gating=False)
    real_open = video._open
    opened: list[object] = []

    def lying_first(data: bytes, container: str) -> object:
        box = real_open(data, container)
        opened.append(box)
        return _LyingIndex(box, {45}) if len(opened) == 1 else box

    monkeypatch.setattr(video, "_open", lying_first)
    result = fingerprint_video(data, PARAMS)
    assert len(opened) == 2
    assert result.incomplete is None and result.skipped is None
    assert [(f.timestamp, f.frames[0].pdq) for f in result.frames] == plain


# --- parts of the timeline, decoded by several workers at once ----------------------------


def _part_samples(data: bytes, part: int, parts: int, params: VideoParams = PARAMS
                  ) -> tuple[list[tuple[float, str | None]], VideoFingerprint]:
    result = fingerprint_video(data, params, part=part, parts=parts)
    assert result.skipped is None, result.detail
    return [(f.timestamp, f.frames[0].pdq) for f in result.frames], result


def _assert_parts_join_to_the_whole(data: bytes, params: VideoParams = PARAMS,
                                    counts: tuple[int, ...] = (2, 3)) -> None:
    whole, one = _part_samples(data, 0, 1, params)
    assert one.incomplete is None, one.detail
    assert len(whole) >= 2
    for parts in counts:
        joined: list[tuple[float, str | None]] = []
        features: list[VpdqFeature] = []
        for part in range(parts):
            samples, result = _part_samples(data, part, parts, params)
            assert result.incomplete is None, (parts, part, result.detail)
            assert [f.frames[0].frame for f in result.frames] == list(range(len(samples)))
            # Each part's samples lie in its stretch (grid times, see fingerprint_video).
            interval = 1.0 / params.video.frames_per_second
            start = video._grid_at_or_after(one.duration * part / parts, interval)
            assert all(t >= start for t, _ in samples), (parts, part, samples[:1])
            if part + 1 < parts:
                end = video._grid_at_or_after(one.duration * (part + 1) / parts, interval)
                assert all(t < end for t, _ in samples), (parts, part, samples[-1:])
            if part == 0:
                assert result.exact == one.exact
            else:
                assert result.exact == video.NOT_COMPUTED
            joined.extend(samples)
            features.extend(result.vpdq)
        # The same frames exactly: same times, same PDQ hashes (no tolerance needed: each
        # part starts at a keyframe at or before its first grid time, decodes the frames
        # from there as the whole run does, and parts meet on grid times).
        assert joined == whole, parts
        assert prune(features) == one.vpdq


@pytest.mark.parametrize(("kind", "gop"), [
    ("h264.mp4", 100),  # x264, 4 s groups of pictures, 3 B-frames
    ("h264.mp4", 25),  # a keyframe a second, as phones write
    ("hevc.mkv", 50),  # x265: open GOPs (leading pictures after a keyframe)
    ("vp9.webm", 50),
    ("mjpeg.avi", None),
])
def test_parts_join_to_the_whole_video(kind: str, gop: int | None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    frames = scene_frames(11.0, 25, 160, 120, scene_seconds=0.5)
    data = encode(frames, kind, fps=25, gop=gop)
    seeks: list[bool] = []
    real_seek = video._seek

    def seek(*args: object) -> object:
        found = real_seek(*args)  # type: ignore[arg-type]
        seeks.append(found is not None)
        return found

    monkeypatch.setattr(video, "_seek", seek)
    _assert_parts_join_to_the_whole(data, counts=(2, 3, 4))
    assert seeks and all(seeks)  # each part after the first started at a keyframe
    _assert_parts_join_to_the_whole(data, VideoParams(video=VideoSettings(
        frames_per_second=3.0)), counts=(2, 3))


def test_parts_of_a_video_with_one_keyframe_only() -> None:
    frames = scene_frames(6.0, 25, 160, 120, scene_seconds=0.5)
    data = encode(frames, "h264.mp4", fps=25, gop=250)
    _assert_parts_join_to_the_whole(data)


def test_a_part_that_finds_no_keyframe_decodes_from_the_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frames = scene_frames(6.0, 25, 160, 120, scene_seconds=0.5)
    data = encode(frames, "h264.mp4", fps=25, gop=50)
    monkeypatch.setattr(video, "_seek", lambda *args: None)
    _assert_parts_join_to_the_whole(data)


def test_a_part_past_the_end_has_no_frames_and_no_error() -> None:
    data = clip("h264.mp4", seconds=0.6)
    assert len(fingerprint_video(data, PARAMS).frames) == 1
    first = fingerprint_video(data, PARAMS, part=0, parts=3)
    assert len(first.frames) == 1
    for part in (1, 2):
        result = fingerprint_video(data, PARAMS, part=part, parts=3)
        assert result.skipped is None and result.incomplete is None, result.detail
        assert result.frames == () and result.vpdq == ()
        assert result.codec == "h264"


def test_unknown_duration_leaves_the_video_to_part_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = clip("h264.mp4", seconds=4.0)
    whole, _ = _part_samples(data, 0, 1)
    real_info = video._stream_info

    def no_duration(*args: object) -> video.VideoStream:
        return dataclasses.replace(real_info(*args), duration=0.0)  # type: ignore[arg-type]

    monkeypatch.setattr(video, "_stream_info", no_duration)
    assert _part_samples(data, 0, 2)[0] == whole
    rest, result = _part_samples(data, 1, 2)
    assert rest == [] and result.incomplete is None and result.decoded == 0


def test_parts_of_a_truncated_video() -> None:
    frames = scene_frames(8.0, 25, 160, 120, scene_seconds=0.5)
    data = encode(frames, "h264.mp4", fps=25, gop=25)
    cut = data[:len(data) // 2]  # the index (moov) is at the end: nothing can be read
    results = [fingerprint_video(cut, PARAMS, part=p, parts=2) for p in (0, 1)]
    assert all(r.skipped == video.CORRUPT for r in results)


def test_max_frames_is_shared_among_the_parts(h264: bytes) -> None:
    params = VideoParams(video=VideoSettings(max_frames=3))
    first = fingerprint_video(h264, params, part=0, parts=2)  # ceil(3 / 2) = 2 each
    second = fingerprint_video(h264, params, part=1, parts=2)
    # A 5 s clip: part 0 has grid times 0, 1, 2 (one too many), part 1 has 3 and 4.
    assert len(first.frames) == 2 and first.incomplete == video.FRAMES_PAST_LIMIT
    assert len(second.frames) == 2 and second.incomplete is None


def test_a_part_out_of_range_is_a_programming_error(h264: bytes) -> None:
    for part, parts in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="part"):
            fingerprint_video(h264, PARAMS, part=part, parts=parts)


@pytest.mark.skipif(not (VECTORS / "videos").is_dir(), reason=f"no vPDQ vectors at {VECTORS}")
@pytest.mark.parametrize("name", sorted(p.stem for p in (VECTORS / "videos").glob("*.mp4")))
def test_parts_join_to_the_whole_on_metas_vectors(name: str) -> None:
    _assert_parts_join_to_the_whole((VECTORS / "videos" / f"{name}.mp4").read_bytes())


def test_a_part_starts_at_the_keyframe_displayed_at_or_before_its_first_grid_time() -> None:
    # Keyframes at 0, 4 and 8 s; with B-frames the keyframe at 4 s is decoded at 3.92 s,
    # and an MP4 index is searched by decode time: asked for 3.95 s, the container first
    # gives the keyframe displayed at 4 s, and is asked again for the one before.
    frames = scene_frames(10.0, 25, 160, 120, scene_seconds=0.5)
    data = encode(frames, "h264.mp4", fps=25, gop=100)
    for moment, keyframe in ((3.95, 0.0), (4.0, 4.0), (4.5, 4.0), (9.0, 8.0)):
        box = video._open(data, "mp4")
        stream = box.streams.video[0]
        found = video._seek(box, stream, moment)
        assert found is not None
        first = next(found)
        assert first.is_keyframe and first.pts is not None and stream.time_base is not None
        origin = stream.start_time or 0
        assert float((first.pts - origin) * stream.time_base) == pytest.approx(keyframe)
        box.close()
