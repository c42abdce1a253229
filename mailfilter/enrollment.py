"""What `hashes add` stores for one file: the list entries made from it.

Beside the fingerprinting because it is fingerprinting: the exact hashes of any file, a
video's vPDQ features, and an image's perceptual hashes of each frame, of its trimmed copy
and of centre crops (lists made from originals then also catch slightly cropped copies).
An image is decoded once: the crops are cut from the frames its fingerprint was taken of.
No I/O: the command reads the file and stores the entries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mailfilter import signals
from mailfilter.errors import SkipImage
from mailfilter.fingerprint import (
    FingerprintParams,
    fingerprint_decoded,
    fingerprint_file,
    full_size_of,
    media_kind,
)
from mailfilter.hashing.exact import exact_hashes
from mailfilter.hashing.gridhist import gridhist_from_luma
from mailfilter.hashing.pdq import pdq_from_luma
from mailfilter.hashing.vpdq import parse_features
from mailfilter.images import DecodedImage, decode
from mailfilter.model import AttachmentKind, ImageFingerprint
from mailfilter.settings import Settings

CROP_FRACTIONS = (0.05, 0.10)
"""Centre crops enrolled: this fraction of each side's length is cut away, half on each
side, so lists made from the originals also catch slightly cropped copies."""


@dataclass(frozen=True, slots=True)
class Enrolled:
    """One list entry made from a file, and what it was made from."""

    algorithm: str
    value: str | tuple[str, ...]  # hex; a video's vpdq: its features
    variant: str  # "file", "original", "trimmed", "crop 5%", "video", ...
    frame: int = 0


@dataclass
class Enrollment:
    """The entries of one file; `note`: what was left out and why."""

    entries: list[Enrolled] = field(default_factory=list)
    note: str | None = None


def centre_crop(luma: npt.NDArray[np.float32], fraction: float) -> npt.NDArray[np.float32]:
    """The centre of a frame with `fraction` of each side cut away (half on each side)."""
    h, w = luma.shape
    dy = round(h * fraction / 2)
    dx = round(w * fraction / 2)
    return luma[dy:h - dy, dx:w - dx]


def enroll(data: bytes, settings: Settings) -> Enrollment:
    """Every entry stored for one file: the exact hashes of any file; for an image, its
    perceptual hashes (`_image_entries`); for a video, its vPDQ features (the list keeps
    those of quality >= `pdq_min_quality`)."""
    params = FingerprintParams.from_settings(settings)
    decoded: DecodedImage | None = None
    if media_kind(data) is AttachmentKind.IMAGE:
        # Decoded here, not in fingerprint_file, so the crops come from the same frames.
        started = time.monotonic()
        try:
            decoded = decode(data, params.images)
        except SkipImage as exc:
            fp = ImageFingerprint(exact=exact_hashes(data), skipped=exc.reason,
                                  detail=exc.detail)
        else:
            fp = fingerprint_decoded(decoded, exact_hashes(data), params, started)
        kind = AttachmentKind.IMAGE
    else:
        media = fingerprint_file(data, params)
        fp, kind = media.fingerprint, media.kind
    result = Enrollment()
    for signal in signals.EXACT:
        result.entries.append(Enrolled(signal.name, getattr(fp.exact, signal.name), "file"))
    detail = f"{fp.skipped}: {fp.detail}" if fp.skipped and fp.detail else fp.skipped
    if kind is AttachmentKind.FILE:
        result.note = ("not an image or video"
                       + (f" ({detail})" if detail else "") + "; exact hashes only")
    elif fp.skipped:
        result.note = f"not decoded ({detail}); exact hashes only"
    elif kind is AttachmentKind.VIDEO:
        _video_entries(result, fp.vpdq, settings)
        if fp.incomplete:
            read = f"{fp.incomplete}: {fp.detail}" if fp.detail else fp.incomplete
            result.note = "; ".join(filter(None, (result.note, f"read in part ({read})")))
    elif decoded is not None:
        _image_entries(result, decoded, fp, settings)
    return result


def _video_entries(result: Enrollment, features: tuple[str, ...], settings: Settings) -> None:
    gate = settings.match.pdq_min_quality
    usable = sum(1 for f in parse_features(features) if f.quality >= gate)
    if not usable:
        result.note = f"no sampled frame of PDQ quality {gate} or more; exact hashes only"
        return
    result.entries.append(Enrolled("vpdq", features, "video"))
    if usable < len(features):
        result.note = f"{len(features) - usable} of {len(features)} frames under quality {gate}"


def _image_entries(result: Enrollment, decoded: DecodedImage, fp: ImageFingerprint,
                   settings: Settings) -> None:
    """PDQ (the original orientation only: queries try all 8) and gridhist of each frame,
    of its trimmed-borders copy and of centre crops (`CROP_FRACTIONS`). PDQ of frames with
    too little information (quality under `pdq_min_quality`) is left out."""
    for frame in fp.frames:
        variant = "trimmed" if frame.trimmed else "original"
        if frame.pdq:
            result.entries.append(Enrolled("pdq", frame.pdq, variant, frame.frame))
        if frame.gridhist:
            result.entries.append(Enrolled("gridhist", frame.gridhist, variant, frame.frame))
    low = [f for f in fp.frames if not f.trimmed and f.pdq is None]
    if low:
        result.note = f"no PDQ for {len(low)} frame(s): {low[0].reason or 'low quality'}"
    if min(decoded.width, decoded.height) < settings.images.min_dimension:
        return
    for index, luma in enumerate(decoded.frames):
        full = decoded.full_size(index)
        for fraction in CROP_FRACTIONS:
            crop = centre_crop(luma, fraction)
            if min(crop.shape) < 8:
                continue
            variant = f"crop {fraction:.0%}"
            pdq = pdq_from_luma(crop, full_size_of((crop.shape[1], crop.shape[0]),
                                                   (luma.shape[1], luma.shape[0]), full))
            if pdq.quality >= settings.match.pdq_min_quality:
                result.entries.append(Enrolled("pdq", pdq.hash, variant, index))
            grid = gridhist_from_luma(crop)
            if grid:
                result.entries.append(Enrolled("gridhist", grid, variant, index))
