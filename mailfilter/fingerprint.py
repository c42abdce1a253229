"""The CPU task a worker runs for one attachment: decode, then every hash.

Decode and hash are two stages; they are wired together here, in one function, because
they run together in one worker process (the pixels never cross a process boundary, only
the small `ImageFingerprint` does). Callers (scanner, CLI) submit `fingerprint_image` to
the worker pool; nothing here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from mailfilter.borders import content_box_with_preview
from mailfilter.errors import SkipImage
from mailfilter.hashing.exact import exact_hashes
from mailfilter.hashing.gridhist import gridhist_dihedral, gridhist_from_luma
from mailfilter.hashing.pdq import pdq_from_luma
from mailfilter.images import FRAMES_PAST_LIMIT, DecodedImage, decode
from mailfilter.magic import NO_VIDEO_STREAM, NOT_A_VIDEO, image_format, video_container
from mailfilter.model import AttachmentKind, ExactHashes, FrameFingerprint, ImageFingerprint
from mailfilter.pixels import preview
from mailfilter.settings import ImageSettings, Settings, VideoSettings

if TYPE_CHECKING:  # PyAV is imported only in the workers that decode videos
    from mailfilter.video import VideoFingerprint

#: Frames are fingerprinted until this share of `images.deadline` has passed since the task
#: began (the frame walk in `decode` stops at half of it); the frames left are reported
#: (`frames-past-limit`), so a long animation never runs into the deadline, which would
#: lose the fingerprints of every frame.
FINGERPRINT_BUDGET_SHARE = 0.85


@dataclass(frozen=True, slots=True)
class FingerprintParams:
    """What the task needs from the settings (small, so it pickles cheaply per task)."""

    images: ImageSettings
    pdq_min_quality: int
    video: VideoSettings = field(default_factory=VideoSettings)

    @classmethod
    def from_settings(cls, settings: Settings) -> FingerprintParams:
        return cls(images=settings.images, pdq_min_quality=settings.match.pdq_min_quality,
                   video=settings.video)

    def deadline(self, kind: AttachmentKind) -> float:
        """The time one attachment of this kind may take (`[video]` or `[images]`)."""
        return self.video.deadline if kind is AttachmentKind.VIDEO else self.images.deadline


def media_kind(data: bytes) -> AttachmentKind:
    """What a file is by its signature (magic.py), as the extract stage tells an attachment:
    an image, a video container, or any other file (exact hashes only)."""
    if image_format(data) is not None:
        return AttachmentKind.IMAGE
    if video_container(data) is not None:
        return AttachmentKind.VIDEO
    return AttachmentKind.FILE


def kind_found(handed_on: AttachmentKind, fp: ImageFingerprint) -> AttachmentKind:
    """What an attachment handed on as `handed_on` turned out to be: a video container
    without any video in it (an M4A, say) is a file."""
    if handed_on is AttachmentKind.VIDEO and fp.skipped in (NOT_A_VIDEO, NO_VIDEO_STREAM):
        return AttachmentKind.FILE
    return handed_on


@dataclass(frozen=True, slots=True)
class MediaFingerprint:
    """One file or attachment fingerprinted as what it turned out to be: `kind` IMAGE,
    VIDEO or FILE (neither: exact hashes only; also a video container holding no video);
    `fingerprint` as the match stage reads it; `video` the decoder's own record of a video
    (container, codec, frames decoded, vPDQ features: what `hash` reports), else None."""

    kind: AttachmentKind
    fingerprint: ImageFingerprint
    video: VideoFingerprint | None = None


def fingerprint_file(data: bytes, params: FingerprintParams, kind: AttachmentKind | None = None,
                     part: int = 0, parts: int = 1) -> MediaFingerprint:
    """The one dispatch of image, video and file. `kind`: as the extract stage handed the
    attachment on, or None for a file of unknown kind (`hash`, `hashes add`: by
    `media_kind`). A video is decoded in part `part` of `parts` of its timeline (see
    merge_video_parts); an image is decoded whatever it turns out to be (a declared image
    without an image signature is skipped `not-an-image` by the decoder)."""
    if kind is None:
        kind = media_kind(data)
    if kind is AttachmentKind.VIDEO:
        record = _video_record(data, params, part, parts)
        fp = _from_video(record)
        return MediaFingerprint(kind_found(kind, fp), fp, record)
    if kind is AttachmentKind.FILE:
        return MediaFingerprint(kind, ImageFingerprint(exact=exact_hashes(data)))
    return MediaFingerprint(AttachmentKind.IMAGE, fingerprint_image(data, params))


def fingerprint_media(data: bytes, kind: AttachmentKind, params: FingerprintParams,
                      part: int = 0, parts: int = 1) -> ImageFingerprint:
    """The worker task for one attachment the extract stage handed on: a video's sampled
    frames (part `part` of `parts` of its timeline: see merge_video_parts), or an image's."""
    return fingerprint_file(data, params, kind, part, parts).fingerprint


def merge_video_parts(parts: Sequence[ImageFingerprint], exact: ExactHashes) -> ImageFingerprint:
    """One video's fingerprint from the fingerprints of the parts of its timeline, decoded
    by several workers at once (one decoder uses one core): samples in time order (frame
    numbers renumbered), vPDQ features joined with the near repeats at the seams pruned as
    within a part, the first part's description, the longest duration. A part that failed
    leaves the video incomplete with its reason (the other parts' frames still match); part
    0 skipped with no frame anywhere (not a video, no video stream, corrupt) is that reason."""
    from mailfilter.hashing.vpdq import parse_features, prune

    frames: list[FrameFingerprint] = []
    times: list[float] = []
    features: list[str] = []
    incomplete: tuple[str, str] | None = None
    for fp in parts:
        frames.extend(replace(f, frame=f.frame + len(times)) for f in fp.frames)
        times.extend(fp.frame_times)
        features.extend(fp.vpdq)
        if incomplete is None and (fp.incomplete or fp.skipped):
            incomplete = (fp.incomplete or fp.skipped or "", fp.detail)
    first = parts[0]
    if first.skipped and not times:
        # Later parts skip only what part 0 skips first (the same bytes, read the same
        # way); one that failed otherwise (a crashed worker, its deadline) is kept, so the
        # video is not taken for a file without anything left unexamined.
        failed = next(((fp.incomplete or fp.skipped or "", fp.detail) for fp in parts[1:]
                       if (fp.incomplete or fp.skipped) not in (None, first.skipped)), None)
        if failed is None:
            return replace(first, exact=exact)
        return replace(first, exact=exact, incomplete=failed[0], detail=failed[1])
    described = next((fp for fp in parts if fp.image_format), first)
    return ImageFingerprint(
        exact=exact, width=described.width, height=described.height,
        image_format=described.image_format, frames=tuple(frames), frame_count=len(times),
        incomplete=incomplete[0] if incomplete else None,
        detail=incomplete[1] if incomplete else "",
        vpdq=tuple(str(f) for f in prune(parse_features(features))), frame_times=tuple(times),
        duration=max(fp.duration for fp in parts),
    )


def _video_record(data: bytes, params: FingerprintParams, part: int = 0,
                  parts: int = 1) -> VideoFingerprint:
    from mailfilter import video  # PyAV: imported only in the workers that decode videos

    video_params = video.VideoParams(
        video=params.video, pdq_min_quality=params.pdq_min_quality,
        min_dimension=params.images.min_dimension, trim_borders=params.images.trim_borders)
    return video.fingerprint_video(data, video_params, part=part, parts=parts)


def _from_video(v: VideoFingerprint) -> ImageFingerprint:
    """The match stage's view of the decoder's record of a video."""
    described = "/".join(x for x in (v.container, v.codec) if x) or None
    return ImageFingerprint(
        exact=v.exact, width=v.width, height=v.height, image_format=described,
        frames=tuple(f for sample in v.frames for f in sample.frames),
        frame_count=len(v.frames), skipped=v.skipped, detail=v.detail,
        incomplete=v.incomplete, vpdq=tuple(v.vpdq_compact),
        frame_times=tuple(sample.timestamp for sample in v.frames), duration=v.duration,
    )


def full_size_of(part: tuple[int, int], frame: tuple[int, int],
                 full: tuple[int, int]) -> tuple[int, int]:
    """The full-size (width, height) a part of a reduced frame stands for: `part` and
    `frame` are (width, height) in the frame's pixels, `full` is the frame's full size."""
    return (max(part[0], round(part[0] * full[0] / frame[0])),
            max(part[1], round(part[1] * full[1] / frame[1])))


def _frame(index: int, luma: np.ndarray, preview: np.ndarray, trimmed: bool,
           params: FingerprintParams, too_small: bool,
           full_size: tuple[int, int] | None = None) -> FrameFingerprint:
    # With the full size, PDQ is computed as on the full-size image (the reference's way):
    # see mailfilter.hashing.pdq.pdq_from_luma.
    pdq = pdq_from_luma(luma, full_size)
    reason: str | None = None
    if too_small:
        reason = "too-small"
    elif pdq.quality < params.pdq_min_quality:
        reason = "low-quality"
    gridhist = None if too_small else gridhist_from_luma(preview)
    return FrameFingerprint(
        frame=index,
        trimmed=trimmed,
        pdq=None if reason else pdq.hash,
        pdq_quality=pdq.quality,
        pdq_dihedral=() if reason else pdq.dihedral,
        gridhist=gridhist,
        reason=reason,
        gridhist_dihedral=gridhist_dihedral(gridhist) if gridhist else (),
    )


def fingerprint_image(data: bytes, params: FingerprintParams) -> ImageFingerprint:
    """Exact hashes always; perceptual hashes of each distinct frame, untrimmed and (when
    the frame has near-uniform borders) trimmed. Never raises for bad image data. An image
    examined only in part (frames past the limit, truncated) has the fingerprints of that
    part and its `incomplete` reason."""
    started = time.monotonic()
    exact = exact_hashes(data)
    try:
        decoded = decode(data, params.images)
    except SkipImage as exc:
        return ImageFingerprint(exact=exact, skipped=exc.reason, detail=exc.detail)
    return fingerprint_decoded(decoded, exact, params, started)


def fingerprint_decoded(decoded: DecodedImage, exact: ExactHashes, params: FingerprintParams,
                        started: float) -> ImageFingerprint:
    """The perceptual hashes of an image already decoded (`started`: when its task began,
    for the time budget); `fingerprint_image` after its decode, and enrollment, which also
    crops the same frames."""
    min_dimension = params.images.min_dimension
    frames: list[FrameFingerprint] = []
    incomplete, detail = decoded.incomplete, decoded.detail
    budget = params.images.deadline * FINGERPRINT_BUDGET_SHARE
    for index, luma in enumerate(decoded.frames):
        if index and time.monotonic() - started > budget:
            incomplete = incomplete or FRAMES_PAST_LIMIT
            detail = "; ".join(filter(None, (
                detail, f"fingerprinted {index} of {len(decoded.frames)} distinct frames in "
                        f"the time budget of {budget:g}s")))
            break
        # Pages of a TIFF or HEIF have sizes of their own: a thumbnail first page must not
        # make a full-size later page "too small".
        full = decoded.full_size(index)
        too_small = min(full) < min_dimension
        shape = (luma.shape[1], luma.shape[0])
        reduced, _ = preview(luma)
        frames.append(_frame(index, luma, reduced, False, params, too_small, full))
        if params.images.trim_borders and not too_small:
            box = content_box_with_preview(luma, reduced)
            if box is not None:
                top, left, bottom, right = box
                trimmed = luma[top:bottom, left:right]
                part = full_size_of((right - left, bottom - top), shape, full)
                frames.append(_frame(index, trimmed, preview(trimmed)[0], True, params, False,
                                     part))
    return ImageFingerprint(
        exact=exact,
        width=decoded.width,
        height=decoded.height,
        image_format=decoded.image_format,
        frames=tuple(frames),
        frame_count=decoded.frame_count,
        incomplete=incomplete,
        detail=detail,
    )
