"""The decode and hash stages for videos: attachment bytes -> frames sampled on a time grid
-> vPDQ features and per-frame PDQ, in bounded time and memory.

Decoder: PyAV (FFmpeg's libraries, bundled in its wheels: FFmpeg 8 here), in the worker
process. Evaluated against the system ``ffmpeg`` (FFmpeg 5.1 from Debian) run as a
subprocess per video, on a generated 60 s 720p30 H.264 clip (testsrc2, x264 defaults: 22.7
MB, 1,800 frames, a keyframe every 250 frames, 3 B-frames), sampling 1 frame per second. The
machine: 2 vCPUs that give little parallel throughput (``ffmpeg -threads 2`` decodes the clip
no faster than ``-threads 1``: 4.23 s against 4.25 s), shared with other sessions' tests, so
figures move by some 20% between runs; each row was measured beside the others:

==========================================  ==========  ================================
                                            wall        peak RSS
==========================================  ==========  ================================
ffmpeg CLI, one thread, every frame         4.3-6.1 s   (the bench's yardstick)
PyAV, one thread, every frame               5.0-5.4 s   60 MB (the whole Python process)
PyAV, skip_frame=NONREF, 1 thread           3.2-3.4 s   58 MB
PyAV, skip_frame=NONREF, 2 threads          2.7-3.1 s   63 MB
ffmpeg subprocess: -threads 2 -skip_frame   4.05-4.26 s  81 MB (the child) + the parent,
  noref, -vf fps=1, rgb24 on a pipe                     and the bytes in a temporary file
`sample_frames` (PyAV, rgb24 1/s), same run  4.13-4.23 s  126 MB (Python, numpy, mailfilter)
`fingerprint_video` (all of the above, PDQ,  3.2-4.5 s   146 MB (0.64-0.79x the yardstick)
  borders, exact hashes)
the same, a keyframe every second           1.0-1.1 s   144 MB (0.20x)
==========================================  ==========  ================================

The subprocess and PyAV decode at the same speed (it is the same library), so the choice
rests on control and cost:

- Control over hostile input. In-process, every limit is checked where it matters: the
  container's and the codec's claimed size before a pixel is decoded (and FFmpeg's own
  ``max_pixels`` codec option, so a bitstream that claims more than its container cannot
  make the decoder allocate it), every decoded frame's size, the sampled-frame cap and the
  deadline between packets and between samples, so a stream of millions of tiny frames or
  an endless one stops on time with the frames so far. Packets can be chosen before they
  reach the decoder (GOP gating, below), which ``ffmpeg`` cannot be told to do. A
  subprocess can only be killed from outside, and its output must be parsed back (frame
  sizes changing mid-stream, timestamps lost by ``fps``).
- Cost. A subprocess needs the bytes in a file (MP4 with its index at the end cannot be
  read from a pipe) and a fork/exec per video (110 ms for a 16 x 16 one-frame video here);
  PyAV reads the bytes from memory.
- Isolation is not lost: the worker pool already runs each task in a process of its own
  with an address-space limit (`workers.memory_limit`) and a deadline; a decoder crash
  kills that worker only (worker-crashed), as a Pillow crash would.
- Packaging: the wheel carries FFmpeg with its encoders too (the same version on every
  machine and in CI, dav1d for AV1), so the tests make their clips with PyAV; the system
  ffmpeg is needed only by bench/video_speed.py (its yardstick).

What is decoded (less than everything): only the first video stream (as the reference);
``skip_frame = NONREF`` drops frames nothing refers to (most B-frames of H.264/HEVC, MPEG-4
B-frames, VP8/VP9/AV1 non-reference frames: 42% of the frames of the clip above), with
frame/slice threads (`DECODE_THREADS`). GOP gating (H.264, HEVC): packets before the next
grid time are held; at the next keyframe they are dropped undecoded when they all display
before it (nothing after a keyframe refers to them), so with a keyframe a second (phones)
mostly keyframes are decoded (60 of 1,800 frames above; 0.20x). A keyframe after dropped
packets must decode as a keyframe, or the container lied about it and the video is decoded
again without gating. Intra-only codecs (MJPEG): packets before the next grid time are not
decoded at all. The sampled frame for grid time t is the first decoded frame at or after t,
reported with its own timestamp (a skipped B-frame moves a sample a frame or two later);
gating never changes which frame that is (checked on Meta's vectors and generated clips).

Measured and not done (60 s 720p30 x264-default clip of bench/video_speed.py, CPU seconds,
which load from other work moves far less than wall time; a one-thread full decode by the
``ffmpeg`` CLI was 7.0-7.6 s of CPU on a loaded machine):

- ``skip_loop_filter``: ``ffmpeg -threads 1 -skip_frame noref`` 4.46 s, with
  ``-skip_loop_filter all`` 3.83 s (-14%). But with NONREF every frame that is decoded is a
  reference: the sampled frames are predicted from the very frames it would apply to, so
  their pixels would drift from the reference's; and PyAV sets it only when the decoder
  opens, not per packet. ``skip_idct`` is read by FFmpeg's MPEG-1/2/4 part 2 macroblock
  code only (not H.264/HEVC), and there only for what NONREF already skips.
- ``skip_frame = NONKEY`` and decoding from the keyframe before each grid time (seek)
  instead of on: with a keyframe every 250 or 600 frames a grid time deep in a group needs
  every reference before it in that group, so a decode per sample repeats the group's
  start for each; NONKEY would sample other frames than the grid's. With a keyframe a
  second, GOP gating already decodes little more than the keyframes (bench: 0.2x).
- Decoder threads: two frame threads cost no more CPU than one (10-minute clip in 2 parts:
  48.5 s against 50.0 s of CPU for both parts; the CLI: 4.8-5.4 s against 4.6-4.9 s), and a
  part that ends first leaves a core to the other, so parts decode with two threads too.
  Four for a video in one part (so the decoder runs further ahead while Python hashes a
  sample): on a shared machine no steady gain showed (7 rounds, spread 3.6-7.9 s), on a
  quiet one 4-7% less wall time for the same CPU (`DECODE_THREADS`); four in each of two
  parts was slower (`PART_DECODE_THREADS`).
- Hashing the sampled frames on a thread beside the decoder: PyAV holds the GIL while it
  decodes (two threads decoding at once used no more CPU per second than one), so Python
  work cannot overlap the decode (tried again with a one-thread executor for the samples:
  1.46-1.60 s against 1.48-1.65 s, no gain); the exact hashes can (hashlib lets go of the
  GIL over a large buffer) and run beside it.

Where the CPU goes then (the same clip, one thread): decoding the reference frames 3.9 s
(964 of 1,800 frames), RGB conversion 0.35 s (5.8 ms a frame: swscale with
``ACCURATE_RND``), PDQ with luma, preview and border trimming 0.6 s (10 ms a frame), the exact
hashes 0.07 s. The reference frames alone are 0.52-0.6 of a full decode's CPU, so 0.5x of a
one-thread full decode needs a second core: frame threads, and the scanner's parts.

Frame conversion: vPDQ's reference converts each frame to RGB24 with swscale
(``SWS_AREA``) at full size, with swscale's default (BT.601) coefficients whatever the
stream says. The same conversion needs ``ACCURATE_RND`` here: the reference's build rounds as
swscale's C code does, the SIMD fast path (PyAV's default) differs by one level in places,
which moved 720p hashes by a median of 4 bits (worst 22). With it, on Meta's sample videos
(every frame, quality >= 50): median 0 bits for all but test-padded-dimensions (median 2, worst
8), worst 2 elsewhere (tests/test_vpdq.py).

Limits (`[video]`): ``max_bytes`` before opening; ``max_pixels`` for the claimed and every
decoded frame size; ``max_frames`` sampled frames; ``deadline`` for the whole task (decoding
stops at `DEADLINE_SHARE` of it, so the frames so far are hashed and returned before the
worker pool's deadline). Past a limit after some frames: the frames so far, with
``incomplete`` set (frames-past-limit, deadline, too-many-pixels, corrupt, truncated: the
frames end well before the video stream's declared length); before any frame:
``SkipImage`` with the reason. Only ``SkipImage`` leaves `sample_frames`.

Parts (one decoder uses one core): `fingerprint_video(data, params, part, parts)` samples
only the grid times of its share of the declared duration, starting at a keyframe at or
before the first (``container.seek``, asked again for an earlier one when an MP4 index,
searched by decode time, gives a keyframe displayed after it; no keyframe found: decoded
from the start). Each part decodes from its keyframe as a whole run would (skipped
non-reference frames, gating), and parts meet on grid times, so the parts' samples joined
are the whole run's, frame for frame (tests/test_video.py, on generated clips and Meta's
vectors). The worker pool runs the parts at once; the caller joins them.

Skip reasons: not-a-video (no container signature we read), unsupported-format (a container
we read holding a codec we do not), no-video-stream, too-large, too-many-pixels, corrupt,
no-frames, deadline.
"""

from __future__ import annotations

import io
import itertools
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation

from mailfilter.borders import content_box_with_preview
from mailfilter.errors import SkipImage
from mailfilter.hashing.exact import exact_hashes
from mailfilter.hashing.gridhist import gridhist_dihedral, gridhist_from_luma
from mailfilter.hashing.pdq import PdqResult, pdq_from_luma
from mailfilter.hashing.vpdq import VpdqFeature, feature_from_pdq, luma_from_rgb, prune
from mailfilter.magic import NO_VIDEO_STREAM, NOT_A_VIDEO, video_container
from mailfilter.model import ExactHashes, FrameFingerprint
from mailfilter.pixels import preview
from mailfilter.settings import Settings, VideoSettings

__all__ = [
    "CORRUPT",
    "DEADLINE",
    "FRAMES_PAST_LIMIT",
    "NOT_A_VIDEO",
    "NOT_COMPUTED",
    "NO_VIDEO_STREAM",
    "TOO_MANY_PIXELS",
    "TRUNCATED",
    "SampledFrame",
    "VideoFingerprint",
    "VideoParams",
    "VideoSample",
    "VideoStream",
    "fingerprint_video",
    "sample_frames",
    "sniff_container",
]

UNSUPPORTED_FORMAT = "unsupported-format"
TOO_LARGE = "too-large"
TOO_MANY_PIXELS = "too-many-pixels"
CORRUPT = "corrupt"
NO_FRAMES = "no-frames"
DEADLINE = "deadline"
FRAMES_PAST_LIMIT = "frames-past-limit"
TRUNCATED = "truncated"

#: Decoding stops at this share of `video.deadline` after the task began, so the frames so
#: far are hashed and returned before the worker pool's own deadline ends the task.
DEADLINE_SHARE = 0.85
#: Decoder threads of a video decoded in one part (frame or slice threads, as the codec
#: allows). Four, not two: while Python converts and hashes a sample, four frame threads
#: still have frames in flight (quiet 2-core machine, bench/video_speed.py, 3 rounds each:
#: one part 0.49-0.52x a one-thread decode against 0.51-0.55x with two, the same CPU,
#: +8 MB peak at 720p).
DECODE_THREADS = 4
#: Decoder threads of each part when a video is decoded in several parts at once (a worker
#: per core). Two: with four each, the parts' eight threads on two cores made the parts
#: 3-7% slower (0.40-0.46x against 0.37-0.45x with two); two cost no more CPU than one
#: (module docstring) and let a part that ends first leave its core to the other.
PART_DECODE_THREADS = 2
#: FFmpeg's probing reads at most this much of the file / this much stream time before the
#: streams are known (its defaults are 5 MB and 5 s too; set so a change there cannot
#: widen them).
PROBE_BYTES = 5_000_000
PROBE_MICROSECONDS = 5_000_000
#: A frame at most this far (seconds) before a grid time still counts as on it (timestamps
#: are rounded by containers: 1/25 s as 40 ms, 1/30 s as 33 or 34 ms).
GRID_SLACK = 0.0005
#: Seconds of declared stream length past the last sample that may be without frames before
#: the video counts as truncated (a last GOP of skipped frames, rounding).
TRUNCATION_SLACK = 1.0
#: GOP gating holds at most this many bytes / packets of one group of pictures; a longer
#: group is decoded as it comes.
MAX_HELD_BYTES = 32 * 1000**2
MAX_HELD_PACKETS = 20_000
#: A part of the timeline starts decoding at a keyframe at or before its first grid time: the
#: container is asked for one at most this many times, each time before the keyframe it
#: gave (an MP4 index is searched by decode time, and a keyframe's display time may be a few
#: frames later); then the part decodes from the start of the stream instead.
MAX_SEEKS = 4

# Container -> the one FFmpeg demuxer it is opened with (never FFmpeg's own probing, which
# would hand odd bytes to any of ~300 demuxers).
_DEMUXERS = {"mp4": "mov", "matroska": "matroska", "avi": "avi"}
# Decoders (FFmpeg names) of the codecs read: H.264, HEVC, VP8, VP9, AV1 (dav1d or FFmpeg's
# own), MPEG-4 part 2, MJPEG, and H.263 (3GP from older phones).
_DECODERS = frozenset({
    "h264", "hevc", "vp8", "vp9", "libvpx", "libvpx-vp9", "libdav1d", "av1", "mpeg4",
    "mjpeg", "h263",
})
# Decoders whose every packet is one frame shown at the packet's time, so GOP gating may
# judge packets by their timestamps. Not VP8/VP9/AV1 (hidden frames, shown later by a tiny
# packet of their own) nor MPEG-4 part 2 (AVI's packed B-frames: two frames in a packet).
_GATED_DECODERS = frozenset({"h264", "hevc"})
# MP4/QuickTime top-level boxes that may come first (QuickTime files need no `ftyp`).
_RGB_FLAGS = Interpolation.AREA | Interpolation.ACCURATE_RND


def sniff_container(data: bytes) -> str | None:
    """The video container from the leading bytes (magic.video_container: bytes only, so
    the extract stage sniffs without importing PyAV)."""
    return video_container(data)


@dataclass(frozen=True, slots=True)
class VideoStream:
    """What the container says about the video stream sampled."""

    container: str  # "mp4", "matroska", "avi"
    codec: str  # FFmpeg decoder name
    width: int
    height: int
    duration: float  # seconds, as declared (0.0 when unknown)
    frame_rate: float  # average, as declared (0.0 when unknown)


@dataclass(frozen=True, slots=True)
class VideoSample:
    """One sampled frame: its time (seconds from the stream's start) and RGB24 pixels."""

    timestamp: float
    rgb: npt.NDArray[np.uint8]


@dataclass(slots=True)
class SamplingOutcome:
    """Filled in by `sample_frames` as it goes; final when its iterator is exhausted."""

    stream: VideoStream | None = None
    decoded: int = 0  # frames the decoder returned
    sampled: int = 0
    last_timestamp: float = 0.0
    incomplete: str | None = None
    detail: str = ""


def _open(data: bytes, container: str) -> av.container.InputContainer:
    try:
        return av.open(
            io.BytesIO(data), mode="r", format=_DEMUXERS[container],
            options={"probesize": str(PROBE_BYTES), "analyzeduration": str(PROBE_MICROSECONDS)},
        )
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise SkipImage(CORRUPT, f"{container}: {exc}") from exc


def _stream_info(container: str, box: av.container.InputContainer,
                 stream: av.video.stream.VideoStream) -> VideoStream:
    ctx = stream.codec_context
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif box.duration is not None:
        duration = box.duration / 1_000_000
    rate = stream.average_rate or stream.guessed_rate
    return VideoStream(
        container=container, codec=ctx.name, width=ctx.width, height=ctx.height,
        duration=max(0.0, duration) if math.isfinite(duration) else 0.0,
        frame_rate=float(rate) if rate else 0.0,
    )


def _rgb(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """RGB24 at full size, converted as vPDQ's reference does (see the module docstring)."""
    rgb = frame.reformat(format="rgb24", src_colorspace="ITU601", dst_colorspace="ITU601",
                         interpolation=_RGB_FLAGS).to_ndarray()
    return np.asarray(rgb, dtype=np.uint8)


def sample_frames(data: bytes, limits: VideoSettings, outcome: SamplingOutcome,
                  started: float | None = None, part: int = 0, parts: int = 1
                  ) -> Iterator[VideoSample]:
    """Decode `data` and yield one frame per grid step (``1 / frames_per_second`` s).

    Raises SkipImage (before the first frame) when the video cannot be read at all; a limit
    or error after frames were yielded ends the iteration with `outcome.incomplete` set.
    `started` is the task's start (`time.monotonic()`), for the deadline. `part` of
    `parts`: only the samples of that stretch of the timeline (see `fingerprint_video`);
    a part other than the first raises SkipImage only for what is found before decoding,
    and ends without frames (and without error) when its stretch holds none."""
    if parts < 1 or not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}")
    started = time.monotonic() if started is None else started
    if len(data) > limits.max_bytes:
        raise SkipImage(TOO_LARGE, f"{len(data)} bytes > max_bytes {limits.max_bytes}")
    container = sniff_container(data)
    if container is None:
        raise SkipImage(NOT_A_VIDEO)
    run = _Run(limits=limits, outcome=outcome, started=started, part=part, parts=parts)
    box = _open(data, container)
    try:
        restart = yield from _sample(box, container, run, gating=run.gating)
    finally:
        box.close()
    if restart:
        # A keyframe the container promised did not decode as one: decode everything (but
        # the frames already sampled) again, from the start, without skipping GOPs (or a
        # part's seek found no keyframe: from the start, with them). Errors of the first
        # pass (frames decoded without their references) are its own.
        run.errors, run.first_error = 0, ""
        box = _open(data, container)
        try:
            yield from _sample(box, container, run, gating=run.gating)
        finally:
            box.close()


@dataclass(slots=True)
class _Run:
    """The state of one video's sampling, kept across a restart."""

    limits: VideoSettings
    outcome: SamplingOutcome
    started: float
    part: int = 0
    parts: int = 1
    max_frames: int = field(init=False, default=0)  # ceil(`max_frames` / parts)
    next_time: float = 0.0  # the next grid time to sample
    end_time: float | None = None  # the grid time that ends the part (None: the stream's end)
    placed: bool = False  # the part's stretch is known (next_time, end_time)
    empty: bool = False  # the part's stretch holds no grid time
    seek: bool = True  # start at a keyframe before the part's first grid time
    gating: bool = True  # GOP gating (off after a keyframe flag proved false)
    errors: int = 0
    first_error: str = ""

    def __post_init__(self) -> None:
        self.max_frames = -(-self.limits.max_frames // self.parts)


def _grid_at_or_after(moment: float, interval: float) -> float:
    """The first grid time at or after `moment` (parts meet on grid times, each computed by
    the same expression, so neighbouring parts agree to the last bit)."""
    return math.ceil(moment / interval - 1e-9) * interval


def _place(run: _Run, info: VideoStream, interval: float) -> None:
    """The part's stretch of the timeline: grid times t with start <= t < end, start and
    end the declared duration * part / parts and * (part + 1) / parts (the last part: to
    the end of the stream, whatever the declared duration says). Unknown duration: the first
    part takes everything, the others nothing."""
    run.placed = True
    if run.parts == 1:
        return
    duration = info.duration
    if not (math.isfinite(duration) and duration > 0):
        run.empty = run.part > 0
        return

    def boundary(index: int) -> float:
        return _grid_at_or_after(duration * index / run.parts, interval)

    run.next_time = boundary(run.part)
    run.end_time = boundary(run.part + 1) if run.part + 1 < run.parts else None
    run.empty = run.end_time is not None and run.end_time <= run.next_time


def _prepare(box: av.container.InputContainer, container: str, run: _Run
             ) -> tuple[av.video.stream.VideoStream, VideoStream]:
    limits = run.limits
    if not box.streams.video:
        raise SkipImage(NO_VIDEO_STREAM, f"{container} with {len(box.streams)} other streams")
    stream = box.streams.video[0]
    ctx = stream.codec_context
    if ctx.name not in _DECODERS:
        raise SkipImage(UNSUPPORTED_FORMAT, f"{container} with {ctx.name} video")
    info = _stream_info(container, box, stream)
    if info.width * info.height > limits.max_pixels:
        raise SkipImage(TOO_MANY_PIXELS, f"{info.width}x{info.height} declared > max_pixels "
                                         f"{limits.max_pixels}")
    # FFmpeg's own cap: a bitstream claiming more than its container never gets its buffers.
    ctx.options = {"max_pixels": str(limits.max_pixels)}
    ctx.thread_count = DECODE_THREADS if run.parts == 1 else PART_DECODE_THREADS
    ctx.thread_type = "AUTO"
    ctx.skip_frame = "NONREF"
    return stream, info


class _Stop(Exception):
    """Sampling ends here (a limit); `SamplingOutcome.incomplete` says why."""


class _Lied(Exception):
    """A keyframe after skipped packets did not decode as a keyframe."""


class _PartEnd(Exception):
    """A frame at or past the end of the part's stretch came out: the part is done."""


def _seek(box: av.container.InputContainer, stream: av.video.stream.VideoStream,
          moment: float) -> Iterator[av.Packet[Any]] | None:
    """Packets from a keyframe displayed at or before `moment` (seconds from the stream's
    start) on, or None when the container gives none (no index, no keyframe flags): then
    the part decodes from the start."""
    time_base = stream.time_base
    if time_base is None:
        return None
    origin = stream.start_time or 0
    target = origin + math.floor(moment / time_base)
    for _ in range(MAX_SEEKS):
        try:
            box.seek(target, backward=True, any_frame=False, stream=stream)
            packets = box.demux(stream)
            first = next(packets, None)
        except av.error.FFmpegError:
            return None
        if first is None or first.pts is None or not first.is_keyframe:
            return None
        if float((first.pts - origin) * time_base) <= moment:
            return itertools.chain([first], packets)
        # The index is searched by decode time: this keyframe displays after `moment`, so
        # frames of the group before it may be at `moment`: ask for the keyframe before.
        earlier = min(target, first.dts if first.dts is not None else first.pts) - 1
        if earlier < origin:
            return None
        target = earlier
    return None


def _sample(box: av.container.InputContainer, container: str, run: _Run,
            gating: bool) -> Generator[VideoSample, None, bool]:
    """Yields the samples; returns True when the container lied about a keyframe (the caller
    then decodes again without gating), or a part found no keyframe to start at (the caller
    then decodes from the start)."""
    limits, outcome = run.limits, run.outcome
    stream, info = _prepare(box, container, run)
    outcome.stream = info
    ctx = stream.codec_context
    intra_only = ctx.name == "mjpeg"
    gating = gating and ctx.name in _GATED_DECODERS
    interval = 1.0 / limits.frames_per_second
    if not run.placed:
        _place(run, info, interval)
    if run.empty:
        return False
    end_time = run.end_time
    budget = limits.deadline * DEADLINE_SHARE
    time_base = stream.time_base
    origin = stream.start_time or 0
    resumed = run.next_time  # after a restart: frames before this were sampled already
    expect_key: list[int] = []  # pts of the keyframe after a skipped stretch, to check

    def stop(reason: str, detail: str) -> None:
        outcome.incomplete = reason
        outcome.detail = detail
        raise _Stop

    def seconds(pts: int | None) -> float | None:
        if pts is None or time_base is None:
            return None
        return float((pts - origin) * time_base)

    def frame_time(frame: av.VideoFrame) -> float:
        found = seconds(frame.pts)
        # No timestamp: count frames at the declared rate (25 when none is declared).
        return found if found is not None else outcome.decoded / (info.frame_rate or 25.0)

    def check_keyframe(frame: av.VideoFrame) -> None:
        if not expect_key:
            return
        if frame.pts == expect_key[0]:
            if not frame.key_frame:
                raise _Lied
            expect_key.clear()
        elif frame.pts is None or frame.pts > expect_key[0]:
            raise _Lied  # the promised keyframe never came out

    def decode(packet: av.Packet[Any]) -> Iterator[VideoSample]:
        try:
            frames = ctx.decode(packet)
        except av.error.FFmpegError as exc:
            # Players go on past a broken packet, and so do we (the next keyframe heals the
            # picture); that frames may be missing is reported at the end.
            run.errors += 1
            run.first_error = run.first_error or f"decoding: {exc}"
            if ctx.width * ctx.height > limits.max_pixels:
                reason = f"{ctx.width}x{ctx.height} in the bitstream > max_pixels"
                if not outcome.sampled:
                    raise SkipImage(TOO_MANY_PIXELS, reason) from exc
                stop(TOO_MANY_PIXELS, reason)
            return
        for frame in frames:
            outcome.decoded += 1
            if frame.width * frame.height > limits.max_pixels:
                reason = f"a {frame.width}x{frame.height} frame > max_pixels {limits.max_pixels}"
                if not outcome.sampled:
                    raise SkipImage(TOO_MANY_PIXELS, reason)
                stop(TOO_MANY_PIXELS, reason)
            check_keyframe(frame)
            timestamp = frame_time(frame)
            if end_time is not None and timestamp >= end_time - GRID_SLACK:
                raise _PartEnd  # frames come out in display order: the rest is later
            if (not math.isfinite(timestamp) or timestamp < run.next_time - GRID_SLACK
                    or timestamp < resumed - GRID_SLACK):
                continue
            if outcome.sampled and time.monotonic() - run.started > budget:
                stop(DEADLINE, f"sampled {outcome.sampled} frames up to "
                               f"{outcome.last_timestamp:.3f}s in the time budget of {budget:g}s")
            if outcome.sampled >= run.max_frames:
                stop(FRAMES_PAST_LIMIT, f"sampled {outcome.sampled} frames (max_frames) up "
                                        f"to {outcome.last_timestamp:.3f}s; more follow")
            outcome.sampled += 1
            outcome.last_timestamp = timestamp
            # The next grid point after this frame (a frame late on the grid does not make
            # the next sample late too; a jump in timestamps skips the empty steps).
            run.next_time = (math.floor(timestamp / interval + GRID_SLACK) + 1) * interval
            yield VideoSample(max(0.0, timestamp), _rgb(frame))

    # GOP gating (decode order): a packet at or past the next grid time `planned` is needed,
    # and so is every packet held before it (its references); a packet before it is held.
    # When a keyframe comes, the packets held are dropped: they display before `planned`, so
    # no grid time needs them, and nothing after a keyframe refers to them. Leading pictures
    # of an open GOP (after the keyframe, displayed before it) refer to what was dropped and
    # are dropped too. A keyframe after dropped packets must decode as a keyframe; if it does
    # not, the container lied and the video is decoded again without gating.
    held: list[av.Packet[Any]] = []
    held_bytes = 0
    holding = gating
    planned = run.next_time
    window = (0.0, 0.0)  # grid time and time of the packet that was decoded for it
    dropped_before: float | None = None  # time of the keyframe after dropped packets
    flushed = False

    def shown_before(packet: av.Packet[Any], moment: float) -> bool:
        shown = seconds(packet.pts)
        return shown is not None and shown < moment

    def send_held() -> Iterator[VideoSample]:
        nonlocal held_bytes
        group = list(held)
        held.clear()
        held_bytes = 0
        for old in group:
            yield from decode(old)

    packets: Iterator[av.Packet[Any]]
    if run.seek and run.next_time > 0:
        found = _seek(box, stream, run.next_time)
        if found is None:
            run.seek = False
            return True  # no keyframe to start at: decode from the start (sample_frames)
        first = next(found)
        packets = itertools.chain([first], found)
        # The keyframe must decode as one (else the index lied: decode from the start);
        # leading pictures of an open GOP after it refer to what was not decoded.
        expect_key[:] = [first.pts] if first.pts is not None else []
        dropped_before = seconds(first.pts)
    else:
        packets = box.demux(stream)
    try:
        while True:
            if time.monotonic() - run.started > budget:
                if not outcome.sampled:
                    raise SkipImage(DEADLINE, f"no frame decoded in {budget:g}s")
                stop(DEADLINE, f"sampled {outcome.sampled} frames up to "
                               f"{outcome.last_timestamp:.3f}s in the time budget of {budget:g}s")
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:  # the demuxer gave up: the file ends here
                run.errors += 1
                run.first_error = run.first_error or f"demuxing: {exc}"
                break
            when = seconds(packet.pts)
            if intra_only and when is not None and when < run.next_time - GRID_SLACK:
                continue  # an intra-only frame off the grid: never decoded
            if packet.size == 0:  # the end: an empty packet flushes the decoder
                held.clear()  # displayed before the next grid time: not needed
                flushed = True
                yield from decode(packet)
                continue
            if not holding:
                yield from decode(packet)
                continue
            if packet.is_keyframe and when is not None:
                if held and all(shown_before(p, when) for p in held):
                    held.clear()
                    held_bytes = 0
                    expect_key[:] = [packet.pts] if packet.pts is not None else []
                    dropped_before = when
                else:
                    yield from send_held()
                    dropped_before = None
            elif dropped_before is not None and when is not None and when < dropped_before:
                continue  # a leading picture of the group after dropped packets
            if when is None or when >= planned - GRID_SLACK:
                yield from send_held()
                yield from decode(packet)
                if when is not None:
                    # Frames decoded next that display between the grid time and this one
                    # (B-frames) are better samples for it: they are decoded too.
                    window = (planned, when)
                    planned = max(planned, (math.floor(when / interval + GRID_SLACK) + 1)
                                  * interval)
                continue
            if window[0] - GRID_SLACK <= when < window[1]:
                yield from send_held()
                yield from decode(packet)
                continue
            held.append(packet)
            held_bytes += packet.size
            if held_bytes > MAX_HELD_BYTES or len(held) > MAX_HELD_PACKETS:
                yield from send_held()  # a stretch this long is decoded as it comes
        if not flushed:  # the demuxer gave up: flush the decoder (held packets are not needed)
            held.clear()
            yield from decode(av.Packet())
    except _Stop:
        return False
    except _PartEnd:
        if run.errors:
            outcome.incomplete = CORRUPT
            outcome.detail = (f"{run.errors} packets failed ({run.first_error}); frames may "
                              "be missing")
        return False
    except _Lied:
        run.gating = run.seek = False
        return True
    if not outcome.sampled and run.part == 0:
        raise SkipImage(CORRUPT if run.errors else NO_FRAMES,
                        run.first_error or f"{container}/{ctx.name}: no frame decoded")
    if run.errors:
        outcome.incomplete = CORRUPT
        outcome.detail = f"{run.errors} packets failed ({run.first_error}); frames may be missing"
        return False
    # A file cut short ends quietly in most demuxers: the video stream's own declared length
    # (not the container's, which an audio track may make longer) says frames are missing.
    if stream.duration is not None and time_base is not None:
        declared = float(stream.duration * time_base)
        last = outcome.last_timestamp if outcome.sampled else run.next_time - interval
        if declared > last + interval + TRUNCATION_SLACK:
            outcome.incomplete = TRUNCATED
            outcome.detail = (f"frames end at {outcome.last_timestamp:.3f}s of a video stream "
                              f"declared {declared:.3f}s long")
    return False


# --- the hash stage ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VideoParams:
    """What the task needs from the settings (small, so it pickles cheaply per task)."""

    video: VideoSettings
    pdq_min_quality: int = 50
    min_dimension: int = 50
    trim_borders: bool = True
    #: gridhist of each sampled frame as well: off by default, it cost 14 ms a 720p frame,
    #: more than PDQ, conversion and border detection together (PDQ carries the frame
    #: lookups in the image lists; with this off `FrameFingerprint.gridhist` is None).
    gridhist: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> VideoParams:
        return cls(video=settings.video, pdq_min_quality=settings.match.pdq_min_quality,
                   min_dimension=settings.images.min_dimension,
                   trim_borders=settings.images.trim_borders)


@dataclass(frozen=True, slots=True)
class SampledFrame:
    """One sampled frame: its time and its fingerprints for the image lists (`frames`:
    the whole frame, then, when it has letterbox/pillarbox borders, the frame with them cut
    away; `FrameFingerprint.frame` is the sample's index)."""

    timestamp: float
    frames: tuple[FrameFingerprint, ...]


@dataclass(frozen=True, slots=True)
class VideoFingerprint:
    """Everything the hash stage knows about one video attachment's bytes.

    Exact hashes exist for every payload. `skipped` holds the reason when no frame could be
    read (then `frames` and `vpdq` are empty); `incomplete` when only part of the video was
    (the fingerprints of that part are kept). `vpdq`: the features of every sampled frame,
    consecutive near repeats pruned (`mailfilter.hashing.vpdq`)."""

    exact: ExactHashes
    container: str = ""
    codec: str = ""
    width: int = 0
    height: int = 0
    duration: float = 0.0  # seconds: the declared duration, or the last frame's time
    frames: tuple[SampledFrame, ...] = ()
    vpdq: tuple[VpdqFeature, ...] = ()
    decoded: int = 0  # frames the decoder returned (non-reference frames are not decoded)
    skipped: str | None = None
    incomplete: str | None = None
    detail: str = ""

    @property
    def vpdq_compact(self) -> list[str]:
        return [str(feature) for feature in self.vpdq]


def _frame_fingerprint(index: int, pdq: PdqResult, preview: npt.NDArray[np.float32],
                       trimmed: bool, too_small: bool, params: VideoParams) -> FrameFingerprint:
    reason: str | None = None
    if too_small:
        reason = "too-small"
    elif pdq.quality < params.pdq_min_quality:
        reason = "low-quality"
    gridhist = None if too_small or not params.gridhist else gridhist_from_luma(preview)
    return FrameFingerprint(
        frame=index, trimmed=trimmed, pdq=None if reason else pdq.hash,
        pdq_quality=pdq.quality, pdq_dihedral=() if reason else pdq.dihedral,
        gridhist=gridhist, reason=reason,
        gridhist_dihedral=gridhist_dihedral(gridhist) if gridhist else (),
    )


def _sampled_frame(index: int, sample: VideoSample, params: VideoParams
                   ) -> tuple[SampledFrame, PdqResult]:
    luma = luma_from_rgb(sample.rgb)
    pdq = pdq_from_luma(luma)
    too_small = min(luma.shape) < params.min_dimension
    # (PDQ is always computed at full size; the preview serves gridhist and borders.)
    reduced = preview(luma)[0] if params.gridhist or params.trim_borders else luma
    frames = [_frame_fingerprint(index, pdq, reduced, False, too_small, params)]
    if params.trim_borders and not too_small:
        # Letterboxed and pillarboxed video is common; a still shown in it is listed
        # without the bars.
        box = content_box_with_preview(luma, reduced)
        if box is not None:
            top, left, bottom, right = box
            trimmed = luma[top:bottom, left:right]
            small = min(trimmed.shape) < params.min_dimension
            frames.append(_frame_fingerprint(index, pdq_from_luma(trimmed), preview(trimmed)[0],
                                             True, small, params))
    return SampledFrame(sample.timestamp, tuple(frames)), pdq


#: `VideoFingerprint.exact` of a part other than the first: the exact hashes are the whole
#: payload's, computed once, by part 0.
NOT_COMPUTED = ExactHashes(md5="", sha1="", sha256="")


def fingerprint_video(data: bytes, params: VideoParams, part: int = 0,
                      parts: int = 1) -> VideoFingerprint:
    """Exact hashes always; vPDQ and per-frame fingerprints of the frames sampled on the
    time grid. Never raises for bad video data: unreadable is `skipped`, read in part is
    `incomplete` (with the fingerprints of that part).

    A long video is decoded as `parts` parts by as many processes at once (one decoder
    uses one core); this is part `part` (0 <= part < parts; ValueError otherwise): the
    samples of the grid times t with start <= t < end, start and end the declared duration
    * part / parts and * (part + 1) / parts (the last part: to the end of the stream,
    whatever the declared duration says). Each part seeks to a keyframe at or before its
    first grid time; the samples of parts 0..parts-1 joined are those of ``parts=1`` (the
    same frames: a sample is the first decoded frame at or after its grid time, and parts
    meet on grid times). A sample's time is at or after its grid time, so the last sample
    of a part can be a frame or two past `end` (never past the next grid time). Duration
    unknown: part 0 samples the whole video, the others return no frames and no error.
    With parts > 1:

    - `exact`: computed by part 0 only; the others hold `NOT_COMPUTED` (empty strings).
    - `vpdq`: every sampled frame's feature, not pruned (pruning needs the feature before
      the part's first), so the parts' features joined and pruned are exactly the features
      of ``parts=1``; `frames` are numbered from 0 in each part.
    - `max_frames` applies to each part as ceil(max_frames / parts); the deadline to each
      part from its own start.
    - `skipped`: part 0 as with parts=1. Other parts are skipped only for what is found
      before decoding (not a video, too large, corrupt container, no video stream,
      unsupported codec, too many pixels declared: the same for every part); what goes
      wrong while decoding their stretch (deadline before a frame, corrupt, too-many-pixels
      frames) is `incomplete` with the frames so far (maybe none). A part whose stretch has
      no frames (past the end of a short video) has none, with no error; one that ends
      before the video stream's declared length says is `truncated`.
    - `incomplete`: per part as with parts=1 (deadline, frames-past-limit, corrupt,
      truncated...); a part other than the last ends at its end without it.
    """
    if parts < 1 or not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}")
    started = time.monotonic()
    # The exact hashes run on a thread of their own beside the decoder: hashlib lets go of
    # the GIL over a large buffer, PyAV's decode does not (two threads decoding got no more
    # CPU than one), so only such C work overlaps the decode. They are small (0.07 s of CPU
    # of some 5 s for a 60 s 720p clip) but all on part 0: 0.72 s for the 227 MB 10-minute
    # bench clip, which part 0 no longer spends before its first packet.
    hashing = _ExactInBackground(data) if part == 0 else None
    try:
        return _fingerprint(data, params, part, parts, started,
                            lambda: hashing.result() if hashing else NOT_COMPUTED)
    finally:
        if hashing is not None:
            hashing.join()


class _ExactInBackground(threading.Thread):
    """`exact_hashes` of the bytes, computed on a thread started at once."""

    def __init__(self, data: bytes) -> None:
        super().__init__(name="exact-hashes", daemon=True)
        self._data = data
        self._found: ExactHashes | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._found = exact_hashes(self._data)
        except BaseException as exc:  # (MemoryError under the worker's limit): re-raised
            self._error = exc

    def result(self) -> ExactHashes:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._found is not None
        return self._found


def _fingerprint(data: bytes, params: VideoParams, part: int, parts: int, started: float,
                 exact_of: Callable[[], ExactHashes]) -> VideoFingerprint:
    outcome = SamplingOutcome()
    sampled: list[SampledFrame] = []
    features: list[VpdqFeature] = []
    try:
        for index, sample in enumerate(sample_frames(data, params.video, outcome, started,
                                                     part=part, parts=parts)):
            frame, pdq = _sampled_frame(index, sample, params)
            sampled.append(frame)
            features.append(feature_from_pdq(pdq, sample.timestamp))
    except SkipImage as exc:
        info = outcome.stream
        if part > 0 and info is not None:  # decoding this part's stretch failed
            outcome.incomplete, outcome.detail = exc.reason, exc.detail
        else:
            return VideoFingerprint(
                exact=exact_of(), container=info.container if info else "",
                codec=info.codec if info else "", width=info.width if info else 0,
                height=info.height if info else 0, duration=info.duration if info else 0.0,
                decoded=outcome.decoded, skipped=exc.reason, detail=exc.detail,
            )
    info = outcome.stream
    assert info is not None  # set before the first frame
    return VideoFingerprint(
        exact=exact_of(), container=info.container, codec=info.codec, width=info.width,
        height=info.height, duration=round(info.duration or outcome.last_timestamp, 3),
        frames=tuple(sampled), vpdq=prune(features) if parts == 1 else tuple(features),
        decoded=outcome.decoded, incomplete=outcome.incomplete, detail=outcome.detail,
    )
