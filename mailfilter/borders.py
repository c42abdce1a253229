"""Border detection: find the content inside near-uniform borders (letterboxing, padding,
solid frames of any colour), so a second, trimmed fingerprint can be taken.

Only row and column statistics are used, so it costs a few passes over the (already
reduced) luminance image. A line (row or column) counts as border when it has the colour
of the outermost lines and almost no variation along it, and the outermost lines must be
flat to within rounding. That is strict on purpose: a padded border is flat even after
JPEG, while a photo's dark sky or white wall has sensor noise, texture or a slow
gradient, so it is not cut (or only where it is within a grey level or two of the edge's
colour). Right next to the content, JPEG ringing and chroma bleeding make a few border
lines noisy: after a strict run of flat lines, the content edge is looked for up to
``EDGE_SEARCH`` lines further, and the noisy lines before it are border too.

The untrimmed picture is always fingerprinted too, so a cut that goes too far costs a
useless extra fingerprint, not a missed match.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["content_box", "content_box_with_preview"]

MIN_SIDE = 16
"""Images smaller than this in either direction are never trimmed."""

MIN_TRIM_FRACTION = 0.02
"""A box is returned only when at least one side loses this fraction of its length."""

MIN_CONTENT_FRACTION = 0.2
"""The content must keep at least this fraction of each side (else: an almost empty
canvas, not a framed picture)."""

CORE_LINES = 4
CORE_MAD = 0.5
"""The flattest of the outermost ``CORE_LINES`` lines must be flat to within this mean
absolute difference (grey levels): padding is flat to within rounding somewhere near the
edge even after JPEG, an untouched photo's sky has sensor noise everywhere."""

DRIFT = 0.75
"""Border line: its mean may differ from the border colour by this much at most. A sky's
colour drifts (JPEG flattens a dark sky into blocks whose colour steps by a grey level
every 8 lines); a border's does not, apart from the noisy lines next to the content,
which ``EDGE_SEARCH`` deals with."""

STRICT_MAD = 2.0
"""Border line: mean absolute difference from the border colour, in grey levels."""

STRICT_PEAK = 16.0
"""Border line: largest absolute difference from the border colour (a small object on an
otherwise empty line stops the border there)."""

EDGE_SEARCH = 16
"""After the strict run, JPEG ringing and chroma bleeding (a 16 x 16 block for 4:2:0
chroma) can make this many lines next to the content noisy: the content edge is looked
for this far, and taken only if one is found (else the run stops where it stopped)."""

CONTENT_MAD = 8.0
CONTENT_PEAK = 64.0
"""A line differing from the border colour by more than this (mean, or at any one pixel)
is content."""

FloatArray = npt.NDArray[np.float32]


def _border_depth(lines: FloatArray) -> int:
    """How many leading lines of `lines` (shape: lines x samples, outermost line first)
    are border: a run of flat lines of the outermost lines' colour, then, if content
    starts within ``EDGE_SEARCH`` lines, the noisy lines up to it."""
    n = lines.shape[0]
    if n < CORE_LINES:
        return 0
    colour = float(np.median(lines[:CORE_LINES]))
    # Most images have no border: their outermost lines alone say so, before the statistics
    # of every line are computed (each line's mean is the same either way).
    if float(np.abs(lines[:CORE_LINES] - colour).mean(axis=1).min()) > CORE_MAD:
        return 0
    dev = np.abs(lines - colour)
    mad = dev.mean(axis=1)
    peak = dev.max(axis=1)
    drift = np.abs(lines.mean(axis=1) - colour)
    flat = (mad <= STRICT_MAD) & (peak <= STRICT_PEAK) & (drift <= DRIFT)
    depth = n if bool(flat.all()) else int(np.argmin(flat))
    if depth < 2:
        return 0
    content = (mad[depth:depth + EDGE_SEARCH] > CONTENT_MAD) | (
        peak[depth:depth + EDGE_SEARCH] > CONTENT_PEAK)
    if bool(content.any()):
        depth += int(np.argmax(content))
    return depth


def _trim_rows(a: FloatArray, top: int, bottom: int, left: int, right: int) -> tuple[int, int]:
    """New (top, bottom) looking at rows of the window, at most half of it from each end."""
    win = a[top:bottom, left:right]
    half = win.shape[0] // 2
    t = _border_depth(win[:half])
    b = _border_depth(win[::-1][:half])
    return top + t, bottom - b


def content_box(luma: npt.NDArray[np.generic]) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the content inside near-uniform borders, bottom and
    right exclusive (``luma[top:bottom, left:right]`` is the content), or None when there
    is no border worth trimming (no side loses ``MIN_TRIM_FRACTION`` of its length), the
    image is too small, or what is left would be almost nothing (a flat image)."""
    a = np.asarray(luma, dtype=np.float32)
    if a.ndim != 2:
        return None
    h, w = a.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        return None
    top, bottom, left, right = 0, h, 0, w
    # Rows over the full width first, then columns between those rows, then rows again
    # between the columns (borders of different colours, or pillarbox plus letterbox).
    top, bottom = _trim_rows(a, top, bottom, left, right)
    if bottom - top < MIN_SIDE:
        return None
    at = a.T
    left, right = _trim_rows(at, left, right, top, bottom)
    if right - left < MIN_SIDE:
        return None
    if (left or right < w) and (top == 0 or bottom == h):
        # Only sides the first pass left alone, so a gradient is never followed down.
        new_top, new_bottom = _trim_rows(a, top, bottom, left, right)
        top = new_top if top == 0 else top
        bottom = new_bottom if bottom == h else bottom
    height, width = bottom - top, right - left
    if height < max(MIN_SIDE, MIN_CONTENT_FRACTION * h):
        return None
    if width < max(MIN_SIDE, MIN_CONTENT_FRACTION * w):
        return None
    trimmed = max(top / h, (h - bottom) / h, left / w, (w - right) / w)
    if trimmed < MIN_TRIM_FRACTION or max(top, h - bottom, left, w - right) < 2:
        return None
    return top, left, bottom, right


def content_box_with_preview(luma: npt.NDArray[np.generic], preview: npt.NDArray[np.generic]
                             ) -> tuple[int, int, int, int] | None:
    """`content_box(luma)`, looked for on `preview` (a reduced copy, or `luma` itself) first:
    most frames have no border, and the preview says so cheaply. When it finds one, the cut
    is made at full size: PDQ moves by many bits when a few more pixels of content are cut
    away than the border."""
    if preview is luma:
        return content_box(luma)
    if content_box(preview) is None:
        return None
    return content_box(luma)
